// Package forge holds the domain of the forge CI server: the types every part
// shares, the small interfaces between the parts, and the one error type.
// It imports only the standard library.
package forge

import (
	"errors"
	"fmt"
)

// Error codes. They are stable: transports (HTTP status, SSH code, CLI exit
// status) map them, and nothing else looks inside an error.
const (
	ECONFLICT     = "conflict"     // the request conflicts with the current state
	EINTERNAL     = "internal"     // a bug or an unexpected failure
	EINVALID      = "invalid"      // the input is wrong
	ENOTFOUND     = "not_found"    // the thing does not exist
	EUNAUTHORIZED = "unauthorized" // who is asking is not known
	EFORBIDDEN    = "forbidden"    // who is asking may not do it
	ECANCELED     = "canceled"     // the work was cancelled
	ETIMEOUT      = "timeout"      // the work ran out of time
	ETOOLARGE     = "too_large"    // the input is over a size limit
	EUNAVAILABLE  = "unavailable"  // a dependency is down; try again later
	ENOTIMPL      = "not_implemented"
)

// Error is forge's error type. Message is safe to show to a user; Err is the
// internal cause, kept for logs.
type Error struct {
	Code    string
	Message string
	Err     error
}

// Error returns the message and, when present, the cause.
func (e *Error) Error() string {
	switch {
	case e.Err != nil && e.Message != "":
		return e.Message + ": " + e.Err.Error()
	case e.Err != nil:
		return e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with code and a formatted user-facing message.
// A %w verb in format keeps the wrapped error as the cause.
func Errorf(code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), Err: errors.Unwrap(err)}
}

// WrapError returns an *Error with code and message whose cause is err.
func WrapError(code string, err error, message string) *Error {
	return &Error{Code: code, Message: message, Err: err}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the user-facing message of the first *Error in err's
// chain, or a generic message for other errors so internals do not leak.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Message != "" {
			return e.Message
		}
		if e.Err != nil {
			return e.Err.Error()
		}
	}
	return "internal error"
}

// httpStatus is the HTTP status of each error code (docs/api.md). Numbers,
// not net/http's names: the domain stays light for every command.
var httpStatus = map[string]int{
	EINVALID:      400,
	EUNAUTHORIZED: 401,
	EFORBIDDEN:    403,
	ENOTFOUND:     404,
	ECONFLICT:     409,
	ETOOLARGE:     413,
	EINTERNAL:     500,
	ENOTIMPL:      501,
	EUNAVAILABLE:  503,
	ECANCELED:     503,
	ETIMEOUT:      504,
}

// HTTPStatus returns the HTTP status for err's code, 500 for an error
// without a known code. It is the one mapping every HTTP transport uses
// (the API and the lease server's REST endpoints), so a code answers
// alike everywhere.
func HTTPStatus(err error) int {
	if st, ok := httpStatus[ErrorCode(err)]; ok {
		return st
	}
	return 500
}
