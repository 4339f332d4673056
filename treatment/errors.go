// Package treatment is kapfhir's domain: ketamine protocols, programmes, sessions,
// booster and maintenance plans, measurements and the scheduling rules that connect them.
//
// It imports only the standard library: no SQL, HTTP or FHIR lives here.
package treatment

import (
	"errors"
	"fmt"
	"strings"
)

// Kind classifies an error so that the edges (HTTP, CLI) can choose a status
// without knowing where the error came from.
type Kind string

// The error kinds. HTTP status codes appear only at the edge.
const (
	KindInvalid      Kind = "invalid"      // the request is malformed or breaks a rule (400/422)
	KindNotFound     Kind = "not_found"    // the thing named does not exist (404)
	KindConflict     Kind = "conflict"     // the state changed underneath, or a duplicate (409)
	KindUnauthorized Kind = "unauthorized" // no or bad credentials (401)
	KindForbidden    Kind = "forbidden"    // credentials lack the right (403)
	KindUnavailable  Kind = "unavailable"  // a dependency is down; retry later (503)
	KindInternal     Kind = "internal"     // a bug or an unexpected failure (500)
)

// FieldError names one bad field and why it is bad. Field is a JSON-pointer-like
// path in the caller's terms ("items[3]", "name.family"). Reasons never echo the
// value, so no PHI reaches a log or a response through them.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// Error is the domain error. Msg is safe to show to a caller; Err is the cause,
// kept for logs and errors.Is/As.
type Error struct {
	Kind   Kind
	Msg    string
	Fields []FieldError
	Err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(string(e.Kind))
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	for i, f := range e.Fields {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(f.Field + ": " + f.Reason)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error of kind k with a formatted, caller-safe message.
func Errorf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// Invalid returns a KindInvalid error listing every bad field.
func Invalid(msg string, fields ...FieldError) *Error {
	return &Error{Kind: KindInvalid, Msg: msg, Fields: fields}
}

// NotFound returns a KindNotFound error for the thing of type what with the given id.
func NotFound(what, id string) *Error {
	return &Error{Kind: KindNotFound, Msg: fmt.Sprintf("%s %q not found", what, id)}
}

// ErrorKind reports the Kind of err, or KindInternal for anything that is not an *Error.
func ErrorKind(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// Problems collects field errors so validation reports every problem at once.
type Problems []FieldError

// Add records that field is bad for reason.
func (p *Problems) Add(field, reason string) {
	*p = append(*p, FieldError{Field: field, Reason: reason})
}

// Addf records a formatted reason.
func (p *Problems) Addf(field, format string, args ...any) {
	p.Add(field, fmt.Sprintf(format, args...))
}

// Err returns nil when nothing was recorded, otherwise a KindInvalid *Error.
func (p Problems) Err(msg string) error {
	if len(p) == 0 {
		return nil
	}
	return Invalid(msg, p...)
}
