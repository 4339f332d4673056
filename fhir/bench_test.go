package fhir_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/resource"
)

// BenchmarkRead compares GET /fhir/CarePlan/{id} through the FHIR surface
// (with the in-memory reader) with a plain Echo handler writing the same
// bytes from memory: the difference is what the surface costs per read.
func BenchmarkRead(b *testing.B) {
	f := fixture(b)
	stored := f.versions[resource.Key{Type: "CarePlan", ID: "cp1"}]
	body := stored[len(stored)-1].JSON

	static := echo.New()
	static.GET("/fhir/CarePlan/:id", func(c echo.Context) error {
		return c.Blob(http.StatusOK, "application/fhir+json; charset=utf-8", body)
	})

	for _, bc := range []struct {
		name string
		h    http.Handler
	}{
		{"fhir-read", newTestEcho(b, f)},
		{"echo-static", static},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "/fhir/CarePlan/cp1", nil)
			req.Header.Set("Accept", "application/fhir+json")
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				bc.h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || rec.Body.Len() != len(body) {
					b.Fatalf("status %d, %d bytes", rec.Code, rec.Body.Len())
				}
			}
		})
	}
}
