package forge_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/forgeci/forge"
)

// Every code has the status docs/api.md gives it; every HTTP transport
// asks HTTPStatus, so this table is the one mapping.
func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		code string
		want int
	}{
		{forge.EINVALID, 400}, {forge.EUNAUTHORIZED, 401}, {forge.EFORBIDDEN, 403},
		{forge.ENOTFOUND, 404}, {forge.ECONFLICT, 409}, {forge.ETOOLARGE, 413},
		{forge.EINTERNAL, 500}, {forge.ENOTIMPL, 501}, {forge.EUNAVAILABLE, 503},
		{forge.ECANCELED, 503}, {forge.ETIMEOUT, 504},
	}
	for _, tt := range tests {
		if got := forge.HTTPStatus(forge.Errorf(tt.code, "x")); got != tt.want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", tt.code, got, tt.want)
		}
		wrapped := fmt.Errorf("context: %w", forge.Errorf(tt.code, "x"))
		if got := forge.HTTPStatus(wrapped); got != tt.want {
			t.Errorf("HTTPStatus(wrapped %s) = %d, want %d", tt.code, got, tt.want)
		}
	}
	for _, err := range []error{errors.New("plain"), &forge.Error{Code: "no_such_code"}} {
		if got := forge.HTTPStatus(err); got != 500 {
			t.Errorf("HTTPStatus(%v) = %d, want 500", err, got)
		}
	}
}
