package fhir

import (
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	oopb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/operation_outcome_go_proto"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/treatment"
)

// Error is a request error that only exists at the FHIR edge (an unsupported
// format, a wrong content type, bad search parameters): an HTTP status and the
// issues of the OperationOutcome. Domain and store errors stay
// *treatment.Error; WriteError handles both.
type Error struct {
	status int
	issues []issue
}

// issue is one OperationOutcome issue. Diagnostics is caller-safe text;
// expression names the offending parameter, if any.
type issue struct {
	code        c4pb.IssueTypeCode_Value
	diagnostics string
	expression  string
}

func (e *Error) Error() string {
	msgs := make([]string, len(e.issues))
	for i, is := range e.issues {
		msgs[i] = is.diagnostics
	}
	return "fhir: " + http.StatusText(e.status) + ": " + strings.Join(msgs, "; ")
}

// Status is the HTTP status the error is written with.
func (e *Error) Status() int { return e.status }

// NotAcceptable is a 406: the client asked for a format other than FHIR JSON.
func NotAcceptable(msg string) error {
	return &Error{status: http.StatusNotAcceptable, issues: []issue{{code: c4pb.IssueTypeCode_NOT_SUPPORTED, diagnostics: msg}}}
}

// UnsupportedMediaType is a 415: the request body has a content type the
// interaction does not take.
func UnsupportedMediaType(msg string) error {
	return &Error{status: http.StatusUnsupportedMediaType, issues: []issue{{code: c4pb.IssueTypeCode_NOT_SUPPORTED, diagnostics: msg}}}
}

// InvalidParam is a 400 naming the bad request parameter.
func InvalidParam(param, msg string) error {
	return &Error{status: http.StatusBadRequest, issues: []issue{{code: c4pb.IssueTypeCode_INVALID, diagnostics: msg, expression: param}}}
}

// UnsupportedParam is a 400 naming a parameter (or modifier, or value) that
// is well-formed FHIR but that kapfhir does not implement.
func UnsupportedParam(param, msg string) error {
	return &Error{status: http.StatusBadRequest, issues: []issue{{code: c4pb.IssueTypeCode_NOT_SUPPORTED, diagnostics: msg, expression: param}}}
}

// gone is a 410 for a version that records a deletion.
func gone(msg string) error {
	return &Error{status: http.StatusGone, issues: []issue{{code: c4pb.IssueTypeCode_DELETED, diagnostics: msg}}}
}

// problems collects every bad parameter of a request so they are reported at once.
type problems []issue

func (p *problems) invalid(param, msg string) {
	*p = append(*p, issue{code: c4pb.IssueTypeCode_INVALID, diagnostics: msg, expression: param})
}

func (p *problems) unsupported(param, msg string) {
	*p = append(*p, issue{code: c4pb.IssueTypeCode_NOT_SUPPORTED, diagnostics: msg, expression: param})
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &Error{status: http.StatusBadRequest, issues: p}
}

// kindStatus maps domain error kinds to HTTP statuses, at this edge only.
var kindStatus = map[treatment.Kind]struct {
	status int
	code   c4pb.IssueTypeCode_Value
}{
	treatment.KindInvalid:      {http.StatusBadRequest, c4pb.IssueTypeCode_INVALID},
	treatment.KindNotFound:     {http.StatusNotFound, c4pb.IssueTypeCode_NOT_FOUND},
	treatment.KindConflict:     {http.StatusConflict, c4pb.IssueTypeCode_CONFLICT},
	treatment.KindUnauthorized: {http.StatusUnauthorized, c4pb.IssueTypeCode_LOGIN},
	treatment.KindForbidden:    {http.StatusForbidden, c4pb.IssueTypeCode_FORBIDDEN},
	treatment.KindUnavailable:  {http.StatusServiceUnavailable, c4pb.IssueTypeCode_TRANSIENT},
}

// internalMsg is all a caller learns about an unexpected failure.
const internalMsg = "an internal error occurred; it has been logged"

// statusIssue is the issue type of an HTTP status that carries no other
// information (Echo's own errors).
func statusIssue(status int) c4pb.IssueTypeCode_Value {
	switch status {
	case http.StatusBadRequest:
		return c4pb.IssueTypeCode_INVALID
	case http.StatusUnauthorized:
		return c4pb.IssueTypeCode_LOGIN
	case http.StatusForbidden:
		return c4pb.IssueTypeCode_FORBIDDEN
	case http.StatusNotFound:
		return c4pb.IssueTypeCode_NOT_FOUND
	case http.StatusMethodNotAllowed, http.StatusNotAcceptable, http.StatusUnsupportedMediaType:
		return c4pb.IssueTypeCode_NOT_SUPPORTED
	case http.StatusConflict:
		return c4pb.IssueTypeCode_CONFLICT
	case http.StatusGone:
		return c4pb.IssueTypeCode_DELETED
	case http.StatusRequestEntityTooLarge:
		return c4pb.IssueTypeCode_TOO_LONG
	case http.StatusTooManyRequests:
		return c4pb.IssueTypeCode_THROTTLED
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return c4pb.IssueTypeCode_TRANSIENT
	}
	if status >= 500 {
		return c4pb.IssueTypeCode_EXCEPTION
	}
	return c4pb.IssueTypeCode_PROCESSING
}

// outcomeFor turns any error into a status and the issues to report.
// Unknown errors become a generic internal error: their text is for the log.
func outcomeFor(err error) (int, []issue) {
	var fe *Error
	var he *echo.HTTPError
	var de *treatment.Error
	switch {
	case errors.As(err, &fe):
		return fe.status, fe.issues
	case errors.As(err, &he):
		msg := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok && m != "" && he.Code < 500 {
			msg = m
		}
		if msg == "" {
			break
		}
		return he.Code, []issue{{code: statusIssue(he.Code), diagnostics: msg}}
	case errors.As(err, &de):
		ks, ok := kindStatus[de.Kind]
		if !ok {
			break
		}
		if len(de.Fields) == 0 {
			return ks.status, []issue{{code: ks.code, diagnostics: de.Msg}}
		}
		issues := make([]issue, len(de.Fields))
		for i, f := range de.Fields {
			d := f.Reason
			if de.Msg != "" {
				d = de.Msg + ": " + f.Reason
			}
			issues[i] = issue{code: ks.code, diagnostics: d, expression: f.Field}
		}
		return ks.status, issues
	}
	return http.StatusInternalServerError, []issue{{code: c4pb.IssueTypeCode_EXCEPTION, diagnostics: internalMsg}}
}

// operationOutcome builds the OperationOutcome proto for issues.
func operationOutcome(issues []issue) *oopb.OperationOutcome {
	oo := &oopb.OperationOutcome{}
	for _, is := range issues {
		pi := &oopb.OperationOutcome_Issue{
			Severity: &oopb.OperationOutcome_Issue_SeverityCode{Value: c4pb.IssueSeverityCode_ERROR},
			Code:     &oopb.OperationOutcome_Issue_CodeType{Value: is.code},
		}
		if is.diagnostics != "" {
			pi.Diagnostics = &d4pb.String{Value: is.diagnostics}
		}
		if is.expression != "" {
			pi.Expression = []*d4pb.String{{Value: is.expression}}
		}
		oo.Issue = append(oo.Issue, pi)
	}
	return oo
}

// WriteError writes err as an OperationOutcome with the matching status:
// *treatment.Error by kind (not_found 404, invalid 400, conflict 409,
// unauthorized 401, forbidden 403, unavailable 503), *Error with its own
// status, *echo.HTTPError with its code, anything else as a generic 500.
// The process-wide Echo HTTPErrorHandler calls it for every path under /fhir.
func WriteError(c echo.Context, err error) {
	if c.Response().Committed {
		return
	}
	status, issues := outcomeFor(err)
	b, merr := fhirjson.Marshal(operationOutcome(issues))
	if merr != nil {
		// Nothing sensible is left to render; the status still tells the story.
		_ = c.NoContent(http.StatusInternalServerError)
		return
	}
	if c.Request().Method == http.MethodHead {
		c.Response().Header().Set(echo.HeaderContentType, contentType)
		_ = c.NoContent(status)
		return
	}
	_ = c.Blob(status, contentType, b)
}
