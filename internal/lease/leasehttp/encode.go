package leasehttp

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"unicode/utf8"

	wire "github.com/forgeci/forge/client/lease"
)

// appendMessage appends m's JSON to dst, byte for byte what json.Marshal
// writes (TestAppendMessageMatchesJSON), without reflection: the server
// writes a granted, released and often a queued message per grant, and
// encoding/json was a tenth of its CPU. A message with nested messages
// (resumed) or requests, which the server rarely sends, goes through
// encoding/json.
func appendMessage(dst []byte, m *wire.Message) ([]byte, error) {
	if m.Requests != nil || m.Leases != nil || m.Queued != nil {
		data, err := json.Marshal(m)
		return append(dst, data...), err
	}
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, m.Type)
	dst = appendStringField(dst, `,"id":`, m.ID)
	dst = appendStringField(dst, `,"holder":`, m.Holder)
	dst = appendIntField(dst, `,"max_wait_ms":`, m.MaxWaitMS)
	dst = appendStringField(dst, `,"lease":`, m.Lease)
	dst = appendStringField(dst, `,"broken":`, m.Broken)
	dst = appendIntField(dst, `,"version":`, int64(m.Version))
	dst = appendIntField(dst, `,"keepalive_ms":`, m.KeepaliveMS)
	dst = appendStringField(dst, `,"connection":`, m.Connection)
	dst = appendIntField(dst, `,"position":`, int64(m.Position))
	dst = appendStringField(dst, `,"granted_at":`, m.GrantedAt)
	if len(m.Resources) > 0 {
		dst = append(dst, `,"resources":{`...)
		for i, pool := range slices.Sorted(maps.Keys(m.Resources)) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, pool)
			dst = append(dst, ':')
			rs := m.Resources[pool]
			if rs == nil {
				dst = append(dst, "null"...)
				continue
			}
			dst = append(dst, '[')
			for j, r := range rs {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, `{"id":`...)
				dst = appendJSONString(dst, r.ID)
				dst = append(dst, `,"attributes":`...)
				dst = appendStringMap(dst, r.Attributes)
				dst = append(dst, `,"labels":`...)
				dst = appendStringMap(dst, r.Labels)
				dst = append(dst, '}')
			}
			dst = append(dst, ']')
		}
		dst = append(dst, '}')
	}
	dst = appendStringField(dst, `,"reason":`, m.Reason)
	dst = appendStringField(dst, `,"code":`, m.Code)
	dst = appendStringField(dst, `,"message":`, m.Message)
	dst = appendStringField(dst, `,"session":`, m.Session)
	dst = appendStringField(dst, `,"secret":`, m.Secret)
	dst = appendIntField(dst, `,"grace_ms":`, m.GraceMS)
	if m.Durable {
		dst = append(dst, `,"durable":true`...)
	}
	return append(dst, '}'), nil
}

// appendStringField appends key and s, unless s is empty (omitempty).
func appendStringField(dst []byte, key, s string) []byte {
	if s == "" {
		return dst
	}
	return appendJSONString(append(dst, key...), s)
}

// appendIntField appends key and n, unless n is 0 (omitempty).
func appendIntField(dst []byte, key string, n int64) []byte {
	if n == 0 {
		return dst
	}
	return strconv.AppendInt(append(dst, key...), n, 10)
}

// appendStringMap appends m as a JSON object with sorted keys, null when
// nil, as encoding/json does.
func appendStringMap(dst []byte, m map[string]string) []byte {
	if m == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '{')
	if len(m) == 1 {
		for k, v := range m {
			dst = appendJSONString(dst, k)
			dst = appendJSONString(append(dst, ':'), v)
		}
		return append(dst, '}')
	}
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, k)
		dst = appendJSONString(append(dst, ':'), m[k])
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does
// (with its HTML escaping of <, > and &, invalid UTF-8 as \ufffd, and
// U+2028 and U+2029 escaped).
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
