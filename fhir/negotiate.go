package fhir

import (
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
)

// contentType is the one media type kapfhir answers with.
const contentType = "application/fhir+json; charset=utf-8"

// jsonFormats are the _format values and Accept media types served as FHIR JSON.
var jsonFormats = map[string]bool{
	"json":                  true,
	"application/json":      true,
	"application/fhir+json": true,
	"application/json+fhir": true, // DSTU2-era spelling, still sent by some clients
}

// negotiate checks that the client accepts FHIR JSON. A _format parameter
// overrides the Accept header (FHIR R4 §3.1.0.1.7); formats holds its values.
func negotiate(req *http.Request, formats []string) error {
	for _, f := range formats {
		if f == "" {
			continue
		}
		if !jsonFormats[normalizeFormat(f)] {
			return NotAcceptable("_format " + strconv.Quote(f) + " is not supported; this server only speaks FHIR JSON (_format=json)")
		}
	}
	if len(formats) > 0 {
		return nil
	}
	accept := strings.Join(req.Header.Values(echo.HeaderAccept), ",")
	if strings.TrimSpace(accept) == "" {
		return nil
	}
	for r := range strings.SplitSeq(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(r))
		if err != nil {
			continue
		}
		if q, ok := params["q"]; ok {
			if f, err := strconv.ParseFloat(q, 64); err == nil && f <= 0 {
				continue
			}
		}
		if mt == "*/*" || mt == "application/*" || jsonFormats[mt] {
			return nil
		}
	}
	return NotAcceptable("none of the accepted media types is served; this server only speaks application/fhir+json")
}

// normalizeFormat lower-cases a _format value and drops its parameters. A "+"
// left unescaped in a query string arrives as a space, so it is restored.
func normalizeFormat(f string) string {
	f = strings.ToLower(strings.TrimSpace(f))
	if i := strings.IndexByte(f, ';'); i >= 0 {
		f = strings.TrimSpace(f[:i])
	}
	return strings.ReplaceAll(f, " ", "+")
}

// lenient reports whether the client sent Prefer: handling=lenient.
func lenient(req *http.Request) bool {
	for _, v := range req.Header.Values("Prefer") {
		for p := range strings.FieldsFuncSeq(v, func(r rune) bool { return r == ',' || r == ';' }) {
			k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "handling") && strings.EqualFold(strings.Trim(strings.TrimSpace(val), `"`), "lenient") {
				return true
			}
		}
	}
	return false
}
