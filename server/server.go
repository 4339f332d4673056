// Package server assembles kapfhir's HTTP surface on one Echo instance: the
// FHIR REST API at /fhir, the domain API at /api/v1, health probes, the one
// error handler that turns every error into an OperationOutcome (/fhir) or a
// problem+json (everything else), and the serve/shutdown lifecycle.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/kapfhir/kapfhir/api"
	"github.com/kapfhir/kapfhir/fhir"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// Options configures the handler.
type Options struct {
	FHIR         *fhir.Server
	API          *api.Handlers
	Logger       *slog.Logger
	MaxBodyBytes int64
	// Ready reports whether the service can take traffic (e.g. the store answers).
	Ready func(ctx context.Context) error
	// Access verifies bearer tokens and answers /auth/token. Without it
	// every protected route answers 401: there is no unauthenticated mode.
	Access Front
	// Audit records reads, searches and refusals.
	Audit Recorder
	// Throttle, when set, limits each client's request rate.
	Throttle Throttle
	// Source is the installation id (audit records' observer).
	Source string
	// Now is the clock of audit records; nil means time.Now.
	Now func() time.Time
}

// New returns the Echo instance serving everything.
func New(o Options) *echo.Echo {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			err = echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", mbe.Limit))
		}
		var he *echo.HTTPError
		k := treatment.ErrorKind(err)
		if errors.As(err, &he) && he.Code >= 500 || !errors.As(err, &he) && (k == treatment.KindInternal || k == treatment.KindUnavailable) {
			log.ErrorContext(c.Request().Context(), "request failed", "method", c.Request().Method, "path", c.Path(), "error", err)
		}
		if isFHIR(c.Request().URL.Path) {
			fhir.WriteError(c, err)
			return
		}
		api.WriteProblem(c, err)
	}
	// The request log is outermost so that it also records requests whose
	// handler panicked (Recover turns the panic into a 500 error first).
	e.Use(requestLog(log))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true, DisablePrintStack: true}))
	e.Use(middleware.SecureWithConfig(middleware.SecureConfig{
		XSSProtection: "0", ContentTypeNosniff: "nosniff", XFrameOptions: "DENY",
		ContentSecurityPolicy: "default-src 'none'; frame-ancestors 'none'", ReferrerPolicy: "no-referrer",
		HSTSMaxAge: 365 * 24 * 3600, // sent only over TLS (or behind a proxy that says https)
	}))
	if o.MaxBodyBytes > 0 {
		e.Use(bodyLimit(o.MaxBodyBytes))
	}
	e.Use(plainTarget)
	front := o.Access
	if front == nil {
		front = closed{}
	}
	var rec Recorder
	if o.Audit != nil {
		// Reads are audited in groups: one transaction for the records of
		// the requests waiting together, each request held until its own
		// record is durable.
		rec = newBatcher(o.Audit)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	e.Use(authenticate(front, rec, o.Throttle, o.Source, now, log))
	registerAuth(e, front)
	e.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	e.GET("/readyz", func(c echo.Context) error {
		if o.Ready != nil {
			if err := o.Ready(c.Request().Context()); err != nil {
				return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "unavailable"})
			}
		}
		return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
	})
	if o.FHIR != nil {
		o.FHIR.Register(e.Group("/fhir"))
	}
	if o.API != nil {
		o.API.Register(e.Group("/api/v1"))
	}
	return e
}

func isFHIR(path string) bool { return path == "/fhir" || strings.HasPrefix(path, "/fhir/") }

// bodyLimit caps request bodies: a declared Content-Length over the limit is
// refused at once (413); otherwise the body reader stops at the limit.
func bodyLimit(limit int64) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			if req.ContentLength > limit {
				return echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", limit))
			}
			req.Body = http.MaxBytesReader(c.Response(), req.Body, limit)
			return next(c)
		}
	}
}

// plainTarget refuses (400) a request whose path, or a query parameter's
// name or value, decodes to invalid UTF-8 or control characters: no route,
// id or search value has them, and PostgreSQL text cannot hold NUL or
// invalid UTF-8. (The query is parsed once: Echo keeps what QueryParams
// parsed for the handlers.)
func plainTarget(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !resource.PlainText(c.Request().URL.Path) || !resource.PlainValues(c.QueryParams()) {
			return echo.NewHTTPError(http.StatusBadRequest, "the request path or query holds characters no route, id or search value has "+
				"(control characters, invalid UTF-8)")
		}
		return next(c)
	}
}

// requestLog logs one line per request: method, route, status, duration.
// Never the query string or the body: they may hold PHI.
func requestLog(log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			log.LogAttrs(c.Request().Context(), slog.LevelInfo, "http",
				slog.String("method", c.Request().Method),
				slog.String("route", c.Path()),
				slog.Int("status", c.Response().Status),
				slog.Duration("duration", time.Since(start)))
			return nil
		}
	}
}

// Timeouts are the http.Server timeouts.
type Timeouts struct {
	ReadHeader, Read, Write, Idle, Shutdown time.Duration
}

// Serve serves h on ln until ctx is done, then shuts down gracefully within
// the shutdown timeout.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, t Timeouts, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	if t.Shutdown <= 0 {
		t.Shutdown = 15 * time.Second // a zero deadline would cut every open connection
	}
	log.Info("shutting down", "timeout", t.Shutdown)
	sctx, cancel := context.WithTimeout(context.Background(), t.Shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("server: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}
