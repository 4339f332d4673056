// Package fhir is kapfhir's FHIR R4 REST surface on Echo: the
// CapabilityStatement, read, vread, instance history and search (Bundles),
// and OperationOutcome errors. It serves the resource bytes stored on write as
// they are; Bundles are assembled around them without re-marshalling.
//
// It declares the small Reader interface it needs over package resource's
// types and never imports a store.
package fhir

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/resource"
)

// Reader reads stored FHIR resource versions. Errors are *treatment.Error of
// kind not_found where nothing matches; see store.ResourceReader for the
// exact contract.
type Reader interface {
	Read(ctx context.Context, typ, id string) (resource.Version, error)
	VRead(ctx context.Context, typ, id string, versionID int64) (resource.Version, error)
	History(ctx context.Context, typ, id string) ([]resource.Version, error)
	Search(ctx context.Context, q resource.Query) (resource.Page, error)
	Include(ctx context.Context, typ string, ids []string, param string) ([]resource.Version, error)
}

// Options configures the Server.
type Options struct {
	// BaseURL is the absolute base of the FHIR API as clients see it, e.g.
	// "http://127.0.0.1:8080/fhir". Empty: derived per request from the
	// scheme and host + "/fhir".
	BaseURL string
	// Software is "name version" for CapabilityStatement.software.
	Software string
	// Now is the clock for CapabilityStatement.date and Bundle timestamps;
	// nil means time.Now.
	Now func() time.Time
	// Audit lists AuditEvent (read, search) in the CapabilityStatement. Set
	// it exactly when the Server is given an AuditReader (WithAudit): the
	// statement is rendered once, in New.
	Audit bool
	// TokenURL is the SMART Backend Services token endpoint named in the
	// CapabilityStatement (rest.security). Empty: the server root (BaseURL
	// without its "/fhir") + "/auth/token", or, without a BaseURL, the
	// absolute-path reference "/auth/token" on the host that serves /fhir.
	TokenURL string
}

// Server serves the FHIR REST API.
type Server struct {
	r          Reader
	base       string
	now        func() time.Time
	capability []byte
	// audit serves /AuditEvent when set (WithAudit).
	audit AuditReader
}

// New returns a Server reading from r. It renders the CapabilityStatement once.
func New(r Reader, o Options) (*Server, error) {
	if r == nil {
		return nil, fmt.Errorf("fhir: nil Reader")
	}
	s := &Server{r: r, base: strings.TrimSuffix(o.BaseURL, "/"), now: o.Now}
	if s.now == nil {
		s.now = time.Now
	}
	cs, err := capabilityStatement(s.base, o, s.now())
	if err != nil {
		return nil, fmt.Errorf("fhir: capability statement: %w", err)
	}
	s.capability = cs
	return s, nil
}

// Register mounts the interactions on g, which the caller mounts at /fhir.
func (s *Server) Register(g *echo.Group) {
	g.GET("/metadata", s.metadata)
	if s.audit != nil {
		// Static routes, so /AuditEvent never reaches the generic handlers.
		s.registerAudit(g)
	}
	g.GET("/:type", s.searchGet)
	g.GET("/:type/_search", s.searchGet)
	g.POST("/:type/_search", s.searchPost)
	g.GET("/:type/:id", s.read)
	g.GET("/:type/:id/_history", s.history)
	g.GET("/:type/:id/_history/:vid", s.vread)
}

// baseURL is the absolute FHIR base for fullUrl and links.
func (s *Server) baseURL(c echo.Context) string {
	if s.base != "" {
		return s.base
	}
	return c.Scheme() + "://" + c.Request().Host + "/fhir"
}

func (s *Server) metadata(c echo.Context) error {
	if err := negotiate(c.Request(), c.QueryParams()["_format"]); err != nil {
		return err
	}
	return c.Blob(http.StatusOK, contentType, s.capability)
}

func (s *Server) read(c echo.Context) error {
	typ, id, err := instance(c)
	if err != nil {
		return err
	}
	v, err := s.r.Read(c.Request().Context(), typ, id)
	if err != nil {
		return fmt.Errorf("fhir: read %s/%s: %w", typ, id, err)
	}
	return writeVersion(c, v)
}

func (s *Server) vread(c echo.Context) error {
	typ, id, err := instance(c)
	if err != nil {
		return err
	}
	vid, err := strconv.ParseInt(c.Param("vid"), 10, 64)
	if err != nil || vid < 1 {
		return InvalidParam("vid", "the version id must be a positive integer")
	}
	v, err := s.r.VRead(c.Request().Context(), typ, id, vid)
	if err != nil {
		return fmt.Errorf("fhir: vread %s/%s/_history/%d: %w", typ, id, vid, err)
	}
	if v.Deleted {
		return gone(fmt.Sprintf("%s/%s version %d is a deletion", typ, id, vid))
	}
	return writeVersion(c, v)
}

func (s *Server) history(c echo.Context) error {
	typ, id, err := instance(c)
	if err != nil {
		return err
	}
	vs, err := s.r.History(c.Request().Context(), typ, id)
	if err != nil {
		return fmt.Errorf("fhir: history %s/%s: %w", typ, id, err)
	}
	b, err := historyBundle(s.baseURL(c), typ, id, vs, s.now())
	if err != nil {
		return fmt.Errorf("fhir: history %s/%s: %w", typ, id, err)
	}
	return c.Blob(http.StatusOK, contentType, b)
}

// writeVersion serves the stored bytes of v with its ETag and Last-Modified.
func writeVersion(c echo.Context, v resource.Version) error {
	h := c.Response().Header()
	h.Set(echo.HeaderLastModified, v.LastUpdated.UTC().Format(http.TimeFormat))
	h.Set("ETag", etag(v.VersionID))
	return c.Blob(http.StatusOK, contentType, v.JSON)
}

func etag(vid int64) string { return `W/"` + strconv.FormatInt(vid, 10) + `"` }

// instance validates the format, type and id of an instance-level request.
func instance(c echo.Context) (typ, id string, err error) {
	if err := negotiate(c.Request(), c.QueryParams()["_format"]); err != nil {
		return "", "", err
	}
	typ, err = resourceType(c)
	if err != nil {
		return "", "", err
	}
	id = c.Param("id")
	if !resource.ValidID(id) {
		return "", "", InvalidParam("id", "a resource id is 1 to 64 letters, digits, '-' or '.'")
	}
	return typ, id, nil
}

// resourceType returns the :type path parameter if kapfhir serves it.
func resourceType(c echo.Context) (string, error) {
	typ := c.Param("type")
	if !slices.Contains(resource.Types, typ) {
		return "", &Error{status: http.StatusNotFound, issues: []issue{{
			code:        statusIssue(http.StatusNotFound),
			diagnostics: "resource type " + strconv.Quote(typ) + " is not served here; see /metadata",
		}}}
	}
	return typ, nil
}
