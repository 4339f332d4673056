package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// route is what a protected request addresses, classified once for both
// the permission check and the audit record.
type route struct {
	fhir bool
	seg  []string // the path's segments after /fhir or /api/v1
	read bool     // GET or HEAD (a FHIR POST _search reads too)
	// action is the role action an /api route needs ("" for /fhir, whose
	// reads are checked by type and scope).
	action auth.Action
}

func routeOf(req *http.Request) route {
	path := req.URL.Path
	r := route{fhir: isFHIR(path), read: req.Method == http.MethodGet || req.Method == http.MethodHead}
	if r.fhir {
		r.seg = strings.Split(strings.Trim(strings.TrimPrefix(path, "/fhir"), "/"), "/")
		if req.Method == http.MethodPost && len(r.seg) == 2 && r.seg[1] == "_search" {
			r.read = true
		}
		return r
	}
	r.seg = strings.Split(strings.Trim(strings.TrimPrefix(path, "/api/v1"), "/"), "/")
	switch r.seg[0] {
	case "endpoints":
		switch {
		case r.read:
			r.action = auth.SyncStatus
		case len(r.seg) == 3 && (r.seg[2] == "replay-dead" || r.seg[2] == "backfill" || r.seg[2] == "pull"):
			r.action = auth.Replay
		default:
			r.action = auth.AdminEndpoints
		}
	case "sync":
		r.action = auth.SyncStatus
		if !r.read {
			r.action = auth.Replay
		}
	case "clients":
		r.action = auth.AdminClients
	case "audit":
		r.action = auth.AuditRead
		if len(r.seg) > 1 && r.seg[1] == "sync" {
			r.action = auth.SyncLedgerRead
		}
	default:
		r.action = auth.DomainRead
		if !r.read {
			r.action = auth.DomainWrite
		}
	}
	return r
}

// search reports whether a FHIR route is a search (type, or type/_search).
func (r route) search() bool { return r.fhir && (len(r.seg) == 1 || r.seg[1] == "_search") }

// permit decides whether p may make the request: FHIR reads by role, type
// and scope; the domain and operators' API by role.
func permit(p auth.Principal, r route) error {
	if !r.fhir {
		if !p.Can(r.action) {
			return forbidden("the " + string(p.Role) + " role may not do this (" + string(r.action) + ")")
		}
		return nil
	}
	if !r.read {
		return nil // no such interaction: the router answers 404/405
	}
	perm, what := auth.PermRead, "reading "
	if r.search() {
		perm, what = auth.PermSearch, "searching "
	}
	if !p.CanReadFHIR(r.seg[0], perm) {
		return forbidden("this client's role or scopes do not allow " + what + r.seg[0])
	}
	return nil
}

func forbidden(msg string) error { return &treatment.Error{Kind: treatment.KindForbidden, Msg: msg} }

// newEvent starts the audit record of a request: the REST interaction it
// is, what it names, and the query of a search.
func newEvent(c echo.Context, r route, source string, now func() time.Time) audit.Record {
	req := c.Request()
	ev := audit.Record{Time: now(), Outcome: audit.Success, Source: source, Agent: audit.Agent{ClientID: "anonymous", Address: c.RealIP()}, Detail: map[string]string{}}
	switch req.Method {
	case http.MethodPost:
		ev.Subtype = audit.Create
	case http.MethodDelete:
		ev.Subtype = audit.Delete
	case http.MethodPut, http.MethodPatch:
		ev.Subtype = audit.Update
	default:
		ev.Subtype = audit.Read
	}
	query := func(q string) audit.Entity {
		return audit.Entity{Query: base64.StdEncoding.EncodeToString([]byte(q))}
	}
	switch {
	case r.search():
		ev.Subtype = audit.SearchType
		q := req.URL.RawQuery
		if req.Method == http.MethodPost {
			q = "(form body)"
		}
		ev.Entities = append(ev.Entities, query(r.seg[0]+"?"+q))
		for _, name := range []string{"patient", "subject"} {
			if v := strings.TrimPrefix(c.QueryParam(name), "Patient/"); resource.ValidID(v) {
				ev.PatientID = v
			}
		}
	case r.fhir:
		switch {
		case len(r.seg) == 3 && r.seg[2] == "_history":
			ev.Subtype = audit.HistoryInstance
		case len(r.seg) == 4:
			ev.Subtype = audit.VRead
		}
		ref := r.seg[0] + "/" + r.seg[1]
		if !resource.ValidID(r.seg[1]) || audit.RefKey(ref) == "" {
			// Not an id (the handler refuses it): recorded as what was asked.
			ev.Entities = append(ev.Entities, query(req.URL.Path))
			break
		}
		ev.Entities = append(ev.Entities, audit.Entity{Ref: ref})
		if r.seg[0] == "Patient" {
			ev.PatientID = r.seg[1]
		}
	case r.read:
		ev.Detail["api"] = clip("/api/v1/"+r.seg[0], maxDetailPath)
		if len(r.seg) > 1 && r.seg[0] == "patients" && resource.ValidID(r.seg[1]) {
			ev.PatientID = r.seg[1]
		}
		if len(r.seg) == 1 {
			ev.Subtype = audit.SearchType
			ev.Entities = append(ev.Entities, query(req.URL.Path+"?"+req.URL.RawQuery))
		}
	default:
		ev.Detail["api"] = clip(req.Method+" /api/v1/"+strings.Join(r.seg, "/"), maxDetailPath)
	}
	return ev
}

// maxDetailPath bounds the path an audit record's detail keeps (no route
// is longer; a longer path is refused by its handler, and still recorded).
const maxDetailPath = 512

// clip shortens s to at most n bytes without splitting a character.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// outcomeOf maps a response status to an audit outcome.
func outcomeOf(status int) audit.Outcome {
	switch {
	case status < 400:
		return audit.Success
	case status < 500:
		return audit.MinorFailure
	default:
		return audit.SeriousFailure
	}
}

// auditedRead runs a read with its response held back until its audit
// record is written: data is never released unaudited.
func auditedRead(c echo.Context, next echo.HandlerFunc, rec Recorder, ev audit.Record) error {
	res := c.Response()
	orig := res.Writer
	held := &heldResponse{header: orig.Header(), body: heldBodies.Get().(*bytes.Buffer)}
	defer func() {
		if held.body.Cap() <= maxPooledBody {
			held.body.Reset()
			heldBodies.Put(held.body)
		}
	}()
	res.Writer = held
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("handler panic: %v", r)
			}
		}()
		return next(c)
	}()
	if err != nil {
		c.Error(err) // rendered into the held response
	}
	res.Writer = orig
	ev.Outcome = outcomeOf(res.Status)
	if ev.Outcome != audit.Success {
		ev.OutcomeDesc = http.StatusText(res.Status)
	}
	if rec != nil {
		if _, aerr := rec.AppendAudit(c.Request().Context(), ev); aerr != nil {
			// Nothing was sent: let the error handler answer instead.
			res.Committed = false
			return &treatment.Error{Kind: treatment.KindUnavailable, Msg: "the audit trail cannot be written; nothing is served unaudited", Err: aerr}
		}
	}
	orig.WriteHeader(held.status())
	_, werr := orig.Write(held.body.Bytes())
	return werr
}

// audited runs a change. Domain writes audit themselves in their
// transaction (the agent is in the context) and client changes in the
// client registry; what fails, and the operators' actions, are audited
// here once the response is known.
func audited(c echo.Context, next echo.HandlerFunc, r route, rec Recorder, ev audit.Record, log *slog.Logger) error {
	if err := next(c); err != nil {
		c.Error(err)
	}
	status := c.Response().Status
	switch {
	case status >= 400:
		ev.Outcome, ev.OutcomeDesc = outcomeOf(status), http.StatusText(status)
	case r.action == auth.DomainWrite || r.action == auth.AdminClients:
		return nil
	case r.action == auth.Replay:
		ev.Subtype = audit.Replay
	default:
		ev.Subtype = audit.ConfigChange
	}
	record(c, rec, ev, log)
	return nil
}

// heldResponse is a response held in memory until it may be sent.
type heldResponse struct {
	header http.Header
	code   int
	body   *bytes.Buffer
}

// heldBodies keeps the buffers of held responses for reuse; one larger
// than maxPooledBody (a big search page) is left to the collector.
var heldBodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBody = 256 << 10

func (h *heldResponse) Header() http.Header         { return h.header }
func (h *heldResponse) Write(b []byte) (int, error) { return h.body.Write(b) }
func (h *heldResponse) WriteHeader(code int) {
	if h.code == 0 {
		h.code = code
	}
}

func (h *heldResponse) status() int {
	if h.code == 0 {
		return http.StatusOK
	}
	return h.code
}

// record appends ev, logging a failure (refusals are answered regardless).
func record(c echo.Context, rec Recorder, ev audit.Record, log *slog.Logger) {
	if rec == nil {
		return
	}
	if _, err := rec.AppendAudit(c.Request().Context(), ev); err != nil {
		log.Error("audit record not written", "subtype", string(ev.Subtype), "error", err)
	}
}
