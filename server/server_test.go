package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

func newTestServer(t *testing.T, ready func(context.Context) error) (*echo.Echo, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	e := New(Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), MaxBodyBytes: 64, Ready: ready, Access: fakeFront{}})
	e.GET("/fhir/Boom", func(echo.Context) error { panic("kaboom-secret") })
	e.GET("/api/v1/boom", func(echo.Context) error { panic("kaboom-secret") })
	e.POST("/api/v1/echo", func(c echo.Context) error {
		b, err := io.ReadAll(c.Request().Body)
		if err != nil {
			return err
		}
		return c.Blob(http.StatusOK, "text/plain", b)
	})
	return e, &logs
}

// do serves req with the clinic's token unless it carries another (or
// "none").
func do(e *echo.Echo, req *http.Request) *httptest.ResponseRecorder {
	switch req.Header.Get("Authorization") {
	case "":
		req.Header.Set("Authorization", "Bearer clinic")
	case "none":
		req.Header.Del("Authorization")
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func TestErrorsTakeTheShapeOfTheirAPI(t *testing.T) {
	e, logs := newTestServer(t, nil)
	for _, tt := range []struct {
		path, ctype, body string
		status            int
	}{
		{"/fhir/Boom", "application/fhir+json", `"resourceType":"OperationOutcome"`, 500},
		{"/api/v1/boom", "application/problem+json", `"status":500`, 500},
		{"/fhir/NoSuchThing/1/x/y", "application/fhir+json", `"resourceType":"OperationOutcome"`, 404},
		{"/api/v1/nothing-here", "application/problem+json", `"status":404`, 404},
		{"/nowhere", "application/problem+json", `"status":404`, 404},
	} {
		rec := do(e, httptest.NewRequest(http.MethodGet, tt.path+"?name=Jane", nil))
		if rec.Code != tt.status {
			t.Errorf("%s: status %d, want %d", tt.path, rec.Code, tt.status)
		}
		if got := rec.Header().Get("Content-Type"); !strings.HasPrefix(got, tt.ctype) {
			t.Errorf("%s: Content-Type %q, want %q", tt.path, got, tt.ctype)
		}
		if !strings.Contains(rec.Body.String(), tt.body) {
			t.Errorf("%s: body %s lacks %s", tt.path, rec.Body.String(), tt.body)
		}
		if strings.Contains(rec.Body.String(), "kaboom-secret") {
			t.Errorf("%s: panic value leaked to the client: %s", tt.path, rec.Body.String())
		}
	}
	if strings.Contains(logs.String(), "Jane") {
		t.Errorf("request log holds the query string:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "route=/fhir/Boom") || !strings.Contains(logs.String(), "status=500") {
		t.Errorf("request log lacks route and status:\n%s", logs.String())
	}
}

func TestBodyLimit(t *testing.T) {
	e, _ := newTestServer(t, nil)
	small := do(e, httptest.NewRequest(http.MethodPost, "/api/v1/echo", strings.NewReader("hello")))
	if small.Code != 200 || small.Body.String() != "hello" {
		t.Errorf("small body: %d %q", small.Code, small.Body.String())
	}
	declared := do(e, httptest.NewRequest(http.MethodPost, "/api/v1/echo", strings.NewReader(strings.Repeat("x", 65))))
	if declared.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("declared oversized body: %d", declared.Code)
	}
	// Chunked: no Content-Length, so the reader itself must stop at the limit.
	req := httptest.NewRequest(http.MethodPost, "/api/v1/echo", io.MultiReader(strings.NewReader(strings.Repeat("x", 100))))
	req.ContentLength = -1
	chunked := do(e, req)
	if chunked.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("undeclared oversized body: %d %s", chunked.Code, chunked.Body.String())
	}
}

func TestProbesAndHeaders(t *testing.T) {
	var down error
	e, _ := newTestServer(t, func(context.Context) error { return down })
	rec := do(e, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != 200 {
		t.Errorf("/readyz: %d", rec.Code)
	}
	for h, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
		if got := rec.Header().Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	down = errors.New("store unavailable")
	if rec := do(e, httptest.NewRequest(http.MethodGet, "/readyz", nil)); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with store down: %d", rec.Code)
	}
	if rec := do(e, httptest.NewRequest(http.MethodGet, "/healthz", nil)); rec.Code != 200 {
		t.Errorf("/healthz with store down: %d (liveness must not depend on the store)", rec.Code)
	}
}

func TestServeShutsDownWhenContextEnds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, _ := newTestServer(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, e, Timeouts{Shutdown: 10 * time.Second}, slog.New(slog.DiscardHandler)) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		t.Error("server still answering after shutdown")
	}
}
