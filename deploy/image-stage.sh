#!/bin/sh
# Stages the files of forge's FROM scratch image (deploy/Dockerfile) in DIR
# (DIR/rootfs is the image's /, DIR/data its /data):
#   deploy/image-stage.sh DIR FORGE_BINARY
# forge itself (static), and what its server runs beside it: git, with its
# HTTPS helper and the shared libraries both load, and busybox (static) as
# /bin/sh and the usual commands for jobs of the local backend. git and
# busybox are copied from this machine (Debian: git, busybox-static), so
# the image is of this machine's architecture. Nothing is downloaded.
set -eu
dir=$1 forge=$2
die() { echo "image-stage: $*" >&2; exit 1; }

git=$(command -v git) || die "git is not installed here: the image copies this machine's git (apt-get install git)"
busybox=$(command -v busybox) || die "busybox is not installed here (apt-get install busybox-static)"
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked: install busybox-static"
core=$("$git" --exec-path)
[ -x "$core/git-remote-http" ] || die "no $core/git-remote-http: git cannot fetch over HTTPS here"

rm -rf "$dir"
mkdir -p "$dir/data"
dir=$dir/rootfs
mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/bin" "$dir/usr/bin" "$dir$core" "$dir/usr/share/git-core"
chmod 1777 "$dir/tmp"
cp "$forge" "$dir/forge"

# Users, name resolution and the CA certificates git and forge verify TLS with.
printf 'root:x:0:0:root:/:/bin/sh\nforge:x:10001:10001:forge:/data:/bin/sh\n' >"$dir/etc/passwd"
printf 'root:x:0:\nforge:x:10001:\n' >"$dir/etc/group"
printf 'hosts: files dns\npasswd: files\ngroup: files\n' >"$dir/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
else
  echo "image-stage: no /etc/ssl/certs/ca-certificates.crt here: the image will not verify TLS peers" >&2
fi

# git: the binary, its HTTPS helper, every builtin under its git-<name>
# (git runs some of them, such as git-upload-pack, as commands), the
# templates of git init, and the libraries they load.
cp "$git" "$dir/usr/bin/git"
cp "$core/git-remote-http" "$dir$core/git-remote-http"
for name in https ftp ftps; do ln -s git-remote-http "$dir$core/git-remote-$name"; done
for b in $("$git" --list-cmds=builtins); do ln -s /usr/bin/git "$dir$core/git-$b"; done
ln -s /usr/bin/git "$dir$core/git"
[ -d /usr/share/git-core/templates ] && cp -r /usr/share/git-core/templates "$dir/usr/share/git-core/"
for lib in $({ ldd "$git"; ldd "$core/git-remote-http"; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
  mkdir -p "$dir$(dirname "$lib")"
  cp -L "$lib" "$dir$lib"
done

# busybox: /bin/sh and its applets, and /usr/bin/env for #! lines.
cp "$busybox" "$dir/bin/busybox"
for a in $("$busybox" --list); do
  [ -e "$dir/bin/$a" ] || ln -s busybox "$dir/bin/$a"
done
ln -sf /bin/busybox "$dir/usr/bin/env"
