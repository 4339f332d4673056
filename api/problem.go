// Package api is kapfhir's domain API at /api/v1: JSON in, JSON out, errors as
// RFC 9457 problem details (application/problem+json) naming each bad field.
package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/treatment"
)

// Problem is an RFC 9457 problem details object. Errors lists the bad fields.
type Problem struct {
	Type     string                 `json:"type"`
	Title    string                 `json:"title"`
	Status   int                    `json:"status"`
	Detail   string                 `json:"detail,omitempty"`
	Instance string                 `json:"instance,omitempty"`
	Errors   []treatment.FieldError `json:"errors,omitempty"`
}

// problemBase prefixes kapfhir's problem type URIs.
const problemBase = "https://kapfhir.org/problems/"

// requestError is a malformed request (bad JSON, unknown fields, wrong types,
// wrong content type): a 400 or 415, as opposed to a well-formed request that
// breaks a domain rule (422).
type requestError struct {
	status int
	msg    string
	fields []treatment.FieldError
}

func (e *requestError) Error() string { return e.msg }

func badRequest(msg string, fields ...treatment.FieldError) error {
	return &requestError{status: http.StatusBadRequest, msg: msg, fields: fields}
}

// kindStatus maps domain error kinds to HTTP statuses, at the edge only.
var kindStatus = map[treatment.Kind]int{
	treatment.KindInvalid:      http.StatusUnprocessableEntity,
	treatment.KindNotFound:     http.StatusNotFound,
	treatment.KindConflict:     http.StatusConflict,
	treatment.KindUnauthorized: http.StatusUnauthorized,
	treatment.KindForbidden:    http.StatusForbidden,
	treatment.KindUnavailable:  http.StatusServiceUnavailable,
	treatment.KindInternal:     http.StatusInternalServerError,
}

// ProblemFor turns any error into a Problem. Unknown errors become a generic
// internal problem: their text is for the log, not the caller.
func ProblemFor(err error) Problem {
	var re *requestError
	var he *echo.HTTPError
	var de *treatment.Error
	switch {
	case errors.As(err, &re):
		return Problem{Type: problemBase + "bad-request", Title: http.StatusText(re.status), Status: re.status, Detail: re.msg, Errors: re.fields}
	case errors.As(err, &he):
		detail := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok && he.Code < 500 {
			detail = m
		}
		return Problem{Type: "about:blank", Title: http.StatusText(he.Code), Status: he.Code, Detail: detail}
	case errors.As(err, &de):
		st := kindStatus[de.Kind]
		if st == 0 || st == http.StatusInternalServerError {
			break
		}
		return Problem{Type: problemBase + string(de.Kind), Title: http.StatusText(st), Status: st, Detail: de.Msg, Errors: de.Fields}
	}
	return Problem{Type: problemBase + "internal", Title: http.StatusText(http.StatusInternalServerError), Status: http.StatusInternalServerError, Detail: "an internal error occurred; it has been logged"}
}

// WriteProblem writes err as application/problem+json. The process-wide
// error handler calls it for everything outside /fhir.
func WriteProblem(c echo.Context, err error) {
	if c.Response().Committed {
		return
	}
	p := ProblemFor(err)
	p.Instance = c.Request().URL.Path
	b, merr := json.Marshal(p)
	if merr != nil {
		b = []byte(`{"type":"about:blank","title":"Internal Server Error","status":500}`)
		p.Status = http.StatusInternalServerError
	}
	c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(p.Status)
		return
	}
	_ = c.Blob(p.Status, "application/problem+json", b)
}
