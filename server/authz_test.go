package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/audit"
)

// TestOddRequestsAreAuditable: whatever a request names, its audit record
// is valid (a record that cannot be written makes a read answer 503), and
// only real ids become references and patients.
func TestOddRequestsAreAuditable(t *testing.T) {
	long := strings.Repeat("é", 3000)
	for _, tt := range []struct {
		method, target string
		patient        string
		ref            string
	}{
		{"GET", "/fhir/CarePlan/cp-1", "", "CarePlan/cp-1"},
		{"GET", "/fhir/Patient/p-1/_history/2", "p-1", "Patient/p-1"},
		{"GET", "/fhir/carePlan/cp-1", "", ""},                       // not a type
		{"GET", "/fhir/CarePlan/" + strings.Repeat("a", 65), "", ""}, // too long for an id
		{"GET", "/fhir/CarePlan/" + url.PathEscape(long), "", ""},
		{"GET", "/fhir/CarePlan/a%20b", "", ""},
		{"GET", "/fhir/CarePlan?patient=Patient/p-2", "p-2", ""},
		{"GET", "/fhir/CarePlan?subject=" + url.QueryEscape("' OR '1'='1"), "", ""},
		{"GET", "/api/v1/patients/p-3", "p-3", ""},
		{"GET", "/api/v1/patients/" + url.PathEscape(long), "", ""},
		{"POST", "/api/v1/programs/" + url.PathEscape(long) + "/sessions", "", ""},
	} {
		req := httptest.NewRequest(tt.method, tt.target, nil)
		c := echo.New().NewContext(req, httptest.NewRecorder())
		ev, err := audit.Prepare(newEvent(c, routeOf(req), "urn:uuid:test", time.Now))
		if err != nil {
			t.Errorf("%s %.60s: the audit record is refused: %v", tt.method, tt.target, err)
			continue
		}
		if ev.PatientID != tt.patient {
			t.Errorf("%s %.60s: patient %q, want %q", tt.method, tt.target, ev.PatientID, tt.patient)
		}
		var ref string
		for _, e := range ev.Entities {
			ref += e.Ref
		}
		if ref != tt.ref {
			t.Errorf("%s %.60s: references %q, want %q", tt.method, tt.target, ref, tt.ref)
		}
	}
}

// failingRecorder cannot write the audit trail.
type failingRecorder struct{}

func (failingRecorder) AppendAudit(context.Context, ...audit.Record) ([]audit.Record, error) {
	return nil, errors.New("disk full")
}

// A read whose audit record cannot be written is not answered with its
// data: 503, nothing of the body released.
func TestNoDataUnaudited(t *testing.T) {
	e := New(Options{Logger: slog.New(slog.DiscardHandler), Access: fakeFront{}, Audit: failingRecorder{}, Source: "urn:uuid:test"})
	e.GET("/fhir/CarePlan/:id", func(c echo.Context) error { return c.String(http.StatusOK, "secret-care-plan") })
	e.GET("/api/v1/patients/:id", func(c echo.Context) error { return c.String(http.StatusOK, "secret-patient") })
	for _, path := range []string{"/fhir/CarePlan/cp-1", "/api/v1/patients/p-1"} {
		rec := do(e, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "secret") {
			t.Errorf("GET %s with the audit trail down: %d %s; want 503 without the data", path, rec.Code, rec.Body)
		}
	}
}
