package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/treatment"
)

// permit decides whether p may make the request: FHIR reads by role, type
// and scope; the domain and operators' API by role.
func permit(p auth.Principal, method, path string) error {
	if isFHIR(path) {
		seg := strings.Split(strings.Trim(strings.TrimPrefix(path, "/fhir"), "/"), "/")
		typ := seg[0]
		perm := auth.PermSearch
		if len(seg) > 1 && seg[1] != "_search" {
			perm = auth.PermRead
		}
		if method != http.MethodGet && method != http.MethodHead && !(method == http.MethodPost && len(seg) == 2 && seg[1] == "_search") {
			return nil // no such interaction: the router answers 404/405
		}
		if !p.CanReadFHIR(typ, perm) {
			return forbidden("this client's role or scopes do not allow " + verb(perm) + " " + typ)
		}
		return nil
	}
	seg := strings.Split(strings.Trim(strings.TrimPrefix(path, "/api/v1"), "/"), "/")
	read := method == http.MethodGet || method == http.MethodHead
	var a auth.Action
	switch seg[0] {
	case "endpoints":
		switch {
		case read:
			a = auth.SyncStatus
		case len(seg) == 3 && (seg[2] == "replay-dead" || seg[2] == "backfill" || seg[2] == "pull"):
			a = auth.Replay
		default:
			a = auth.AdminEndpoints
		}
	case "sync":
		a = auth.SyncStatus
		if !read {
			a = auth.Replay
		}
	case "clients":
		a = auth.AdminClients
	case "audit":
		a = auth.AuditRead
		if len(seg) > 1 && seg[1] == "sync" {
			a = auth.SyncLedgerRead
		}
	default:
		a = auth.DomainRead
		if !read {
			a = auth.DomainWrite
		}
	}
	if !p.Can(a) {
		return forbidden("the " + string(p.Role) + " role may not do this (" + string(a) + ")")
	}
	return nil
}

func verb(p auth.Perms) string {
	if p == auth.PermRead {
		return "reading"
	}
	return "searching"
}

func forbidden(msg string) error { return &treatment.Error{Kind: treatment.KindForbidden, Msg: msg} }

// newEvent starts the audit record of a request: the REST interaction it
// is, what it names, and the query of a search.
func newEvent(c echo.Context, source string) audit.Record {
	req := c.Request()
	path := req.URL.Path
	r := audit.Record{Time: timeNow(), Outcome: audit.Success, Source: source, Agent: audit.Agent{ClientID: "anonymous", Address: c.RealIP()}}
	read := req.Method == http.MethodGet || req.Method == http.MethodHead
	switch req.Method {
	case http.MethodPost:
		r.Subtype = audit.Create
	case http.MethodDelete:
		r.Subtype = audit.Delete
	case http.MethodPut, http.MethodPatch:
		r.Subtype = audit.Update
	default:
		r.Subtype = audit.Read
	}
	var seg []string
	if isFHIR(path) {
		seg = strings.Split(strings.Trim(strings.TrimPrefix(path, "/fhir"), "/"), "/")
	} else {
		seg = strings.Split(strings.Trim(strings.TrimPrefix(path, "/api/v1"), "/"), "/")
	}
	switch {
	case isFHIR(path) && (len(seg) == 1 || seg[1] == "_search"):
		r.Subtype = audit.SearchType
		q := req.URL.RawQuery
		if req.Method == http.MethodPost {
			q = "(form body)"
		}
		r.Entities = append(r.Entities, audit.Entity{Query: base64.StdEncoding.EncodeToString([]byte(seg[0] + "?" + q))})
		for _, name := range []string{"patient", "subject"} {
			if v := c.QueryParam(name); v != "" {
				r.PatientID = strings.TrimPrefix(v, "Patient/")
			}
		}
	case isFHIR(path):
		switch {
		case len(seg) == 3 && seg[2] == "_history":
			r.Subtype = audit.HistoryInstance
		case len(seg) == 4:
			r.Subtype = audit.VRead
		}
		r.Entities = append(r.Entities, audit.Entity{Ref: seg[0] + "/" + seg[1]})
		if seg[0] == "Patient" {
			r.PatientID = seg[1]
		}
	case read:
		r.Detail = map[string]string{"api": "/api/v1/" + seg[0]}
		if len(seg) > 1 && seg[0] == "patients" {
			r.PatientID = seg[1]
		}
		if len(seg) == 1 {
			r.Subtype = audit.SearchType
			r.Entities = append(r.Entities, audit.Entity{Query: base64.StdEncoding.EncodeToString([]byte(path + "?" + req.URL.RawQuery))})
		}
	default:
		r.Detail = map[string]string{"api": req.Method + " /api/v1/" + strings.Join(seg, "/")}
	}
	if r.Detail == nil {
		r.Detail = map[string]string{}
	}
	return r
}

// refused marks the event as a refused request.
func refusedEvent(r *audit.Record, outcome audit.Outcome, why string) {
	r.Outcome, r.OutcomeDesc = outcome, why
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
	buf := &heldResponse{header: orig.Header()}
	res.Writer = buf
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
			res.Committed = false
			return &treatment.Error{Kind: treatment.KindUnavailable, Msg: "the audit trail cannot be written; nothing is served unaudited", Err: aerr}
		}
	}
	orig.WriteHeader(buf.status())
	_, werr := orig.Write(buf.body.Bytes())
	return werr
}

// audited runs a change. Domain writes audit themselves in their
// transaction (the agent is in the context); what fails, and the
// operators' actions, are audited here once the response is known.
func audited(c echo.Context, next echo.HandlerFunc, rec Recorder, ev audit.Record, log *slog.Logger) error {
	err := next(c)
	if err != nil {
		c.Error(err)
	}
	status := c.Response().Status
	path := c.Request().URL.Path
	domain := !strings.HasPrefix(path, "/api/v1/endpoints") && !strings.HasPrefix(path, "/api/v1/sync") && !strings.HasPrefix(path, "/api/v1/clients")
	switch {
	case status >= 400:
		ev.Outcome, ev.OutcomeDesc = outcomeOf(status), http.StatusText(status)
	case domain || strings.HasPrefix(path, "/api/v1/clients"):
		return nil // audited in the change's transaction / by the client registry
	case strings.Contains(path, "/replay") || strings.HasSuffix(path, "/discard") || strings.HasSuffix(path, "/backfill"):
		ev.Subtype = audit.Replay
	default:
		ev.Subtype = audit.ConfigChange
	}
	if rec != nil {
		if _, aerr := rec.AppendAudit(c.Request().Context(), ev); aerr != nil {
			log.Error("audit record not written", "subtype", string(ev.Subtype), "error", aerr)
		}
	}
	return nil
}

// heldResponse is a response held in memory until it may be sent.
type heldResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

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
