package api

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"math"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/treatment"
)

// Audit is what the auditors' API needs: the audit trail and the sync
// ledger (both kept by the store).
type Audit interface {
	VerifyAudit(ctx context.Context) (audit.Report, error)
	AuditEvents(ctx context.Context, f audit.Filter) (audit.Page, error)
	SyncLedger(ctx context.Context, f outbox.LedgerFilter) (outbox.LedgerPage, error)
}

// WithAudit adds the auditors' routes under /audit.
func (h *Handlers) WithAudit(a Audit) *Handlers {
	h.audit = a
	return h
}

func (h *Handlers) registerAudit(g *echo.Group) {
	if h.audit == nil {
		return
	}
	g.GET("/audit/verify", h.verifyAudit)
	g.GET("/audit/events", h.auditEvents)
	g.GET("/audit/sync", h.syncLedger)
}

// Page sizes of the auditors' listings, and of each read of an export.
const (
	auditDefaultLimit = 100
	auditMaxLimit     = 1000
)

// ndjsonType is the media type of an export: one JSON object per line.
const ndjsonType = "application/x-ndjson"

// exportTrailer is the HTTP trailer that ends an export: "complete", or
// "failed" when reading stopped early (the body is then truncated). Its
// value is set with http.TrailerPrefix so that it is only ever sent as a
// trailer, even when a middleware holds the response back and writes it
// after the handler returns.
const exportTrailer = "Kapfhir-Export-Status"

type verifyJSON struct {
	Intact  bool   `json:"intact"`
	Records int    `json:"records"`
	From    int64  `json:"from"`
	To      int64  `json:"to"`
	Head    string `json:"head"`
	// FirstBad is null when the chain is intact.
	FirstBad *int64 `json:"firstBad"`
	Reason   string `json:"reason"`
}

// verifyAudit checks the whole hash chain. A broken chain is a report
// (200, intact false), not an error.
func (h *Handlers) verifyAudit(c echo.Context) error {
	var bad []treatment.FieldError
	if unknownParams(c.QueryParams(), &bad); len(bad) > 0 {
		return badRequest("invalid query", bad...)
	}
	r, err := h.audit.VerifyAudit(c.Request().Context())
	if err != nil {
		return err
	}
	out := verifyJSON{Intact: r.Intact, Records: r.Records, From: r.From, To: r.To, Head: r.Head, Reason: r.Reason}
	if r.FirstBad != 0 {
		out.FirstBad = &r.FirstBad
	}
	return c.JSON(http.StatusOK, out)
}

type auditEntityJSON struct {
	Ref        string `json:"ref,omitempty"`
	Identifier string `json:"identifier,omitempty"`
	Query      string `json:"query,omitempty"`
	Role       string `json:"role,omitempty"`
}

// auditEventJSON summarizes one audit record; fhir links its AuditEvent.
type auditEventJSON struct {
	ID          string            `json:"id"`
	Seq         int64             `json:"seq"`
	Time        time.Time         `json:"time"`
	Type        string            `json:"type"`
	Subtype     string            `json:"subtype"`
	Action      string            `json:"action"`
	Outcome     int               `json:"outcome"`
	OutcomeDesc string            `json:"outcomeDesc,omitempty"`
	ClientID    string            `json:"clientId,omitempty"`
	Role        string            `json:"role,omitempty"`
	Address     string            `json:"address,omitempty"`
	PatientID   string            `json:"patientId,omitempty"`
	EndpointID  string            `json:"endpointId,omitempty"`
	Entities    []auditEntityJSON `json:"entities,omitempty"`
	Detail      map[string]string `json:"detail,omitempty"`
	FHIR        string            `json:"fhir"`
}

func toAuditEventJSON(r audit.Record, base string) auditEventJSON {
	out := auditEventJSON{
		ID: r.ID, Seq: r.Seq, Time: r.Time.UTC(), Type: string(r.Type), Subtype: string(r.Subtype), Action: string(r.Action),
		Outcome: int(r.Outcome), OutcomeDesc: r.OutcomeDesc, ClientID: r.Agent.ClientID, Role: r.Agent.Role, Address: r.Agent.Address,
		PatientID: r.PatientID, EndpointID: r.EndpointID, Detail: r.Detail, FHIR: base + "/AuditEvent/" + r.ID,
	}
	for _, e := range r.Entities {
		out.Entities = append(out.Entities, auditEntityJSON{Ref: e.Ref, Identifier: e.Identifier, Query: e.Query, Role: string(e.Role)})
	}
	return out
}

// auditEvents lists audit records newest first (order=oldest for the
// other way), or exports them all as NDJSON, each line the stored
// AuditEvent as it is.
func (h *Handlers) auditEvents(c echo.Context) error {
	q := c.QueryParams()
	f := audit.Filter{
		ClientID: strings.TrimSpace(q.Get("clientId")), EndpointID: strings.TrimSpace(q.Get("endpoint")),
		Entity: strings.TrimSpace(q.Get("entity")), Limit: auditDefaultLimit,
	}
	var bad []treatment.FieldError
	unknownParams(q, &bad, "from", "to", "clientId", "patientId", "endpoint", "entity", "type", "subtype", "outcome",
		"order", "limit", "cursor", "format")
	ndjson := exportFormat(c, &bad)
	timeParam(q, "from", &f.From, &bad)
	timeParam(q, "to", &f.To, &bad)
	f.PatientID = patientParam(q, &bad)
	for _, v := range listParam(q, "type") {
		t := audit.Type(v)
		if !knownAuditTypes[t] {
			bad = append(bad, treatment.FieldError{Field: "type", Reason: "must be rest, 110100, 110101, 110113 or 110114 (comma-separated for any of them)"})
			break
		}
		f.Types = append(f.Types, t)
	}
	for _, v := range listParam(q, "subtype") {
		s := audit.Subtype(v)
		if !s.Known() {
			bad = append(bad, treatment.FieldError{Field: "subtype", Reason: "is not a known audit subtype (e.g. read, search-type, update, token-issued, outbound-write)"})
			break
		}
		f.Subtypes = append(f.Subtypes, s)
	}
	for _, v := range listParam(q, "outcome") {
		n, err := strconv.Atoi(v)
		o := audit.Outcome(n)
		if err != nil || strconv.Itoa(n) != v || (o != audit.Success && o != audit.MinorFailure && o != audit.SeriousFailure && o != audit.MajorFailure) {
			bad = append(bad, treatment.FieldError{Field: "outcome", Reason: "must be 0, 4, 8 or 12 (comma-separated for any of them)"})
			break
		}
		f.Outcomes = append(f.Outcomes, o)
	}
	switch q.Get("order") {
	case "", "newest":
	case "oldest":
		f.Oldest = true
	default:
		bad = append(bad, treatment.FieldError{Field: "order", Reason: "must be newest (the default) or oldest"})
	}
	pageParams(q, ndjson, &f.Limit, &f.Cursor, &bad)
	if len(bad) > 0 {
		return badRequest("invalid query", bad...)
	}
	ctx := c.Request().Context()
	base := h.base(c)
	if !ndjson {
		page, err := h.audit.AuditEvents(ctx, f)
		if err != nil {
			return err
		}
		out := make([]auditEventJSON, len(page.Records))
		for i, r := range page.Records {
			out[i] = toAuditEventJSON(r, base)
		}
		return c.JSON(http.StatusOK, listJSON(c, "events", out, page.Next))
	}
	f.Limit = auditMaxLimit
	return export(c, func(ctx context.Context, cursor int64) ([][]byte, int64, error) {
		f.Cursor = cursor
		page, err := h.audit.AuditEvents(ctx, f)
		if err != nil {
			return nil, 0, err
		}
		lines := make([][]byte, len(page.Records))
		for i, r := range page.Records {
			lines[i] = r.JSON
		}
		return lines, page.Next, nil
	}, f.Cursor)
}

// ledgerJSON is a sync log line as /sync/log shows it, with its patient.
type ledgerJSON struct {
	eventJSON
	PatientID string `json:"patientId,omitempty"`
}

func toLedgerJSON(e outbox.LedgerEntry) ledgerJSON {
	return ledgerJSON{eventJSON: eventJSON{
		ID: e.ID, At: e.At.UTC(), Endpoint: e.EndpointID, ItemID: e.ItemID, ResourceType: e.ResourceType, ResourceID: e.ResourceID,
		Version: e.Version, Action: e.Action, Status: e.Status, EHRID: e.EHRID, EHRVersion: e.EHRVersion, Request: e.Request,
		Detail: e.Detail, Actor: e.Actor,
	}, PatientID: e.PatientID}
}

var resourceTypeRE = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)

// syncLedger lists what was sent where, newest first, or exports it all as
// NDJSON.
func (h *Handlers) syncLedger(c echo.Context) error {
	q := c.QueryParams()
	var bad []treatment.FieldError
	unknownParams(q, &bad, "endpoint", "patientId", "resourceType", "from", "to", "limit", "cursor", "format")
	lq := outbox.LedgerFilter{EndpointID: strings.TrimSpace(q.Get("endpoint")), ResourceType: q.Get("resourceType"), Limit: auditDefaultLimit}
	ndjson := exportFormat(c, &bad)
	if lq.ResourceType != "" && !resourceTypeRE.MatchString(lq.ResourceType) {
		bad = append(bad, treatment.FieldError{Field: "resourceType", Reason: "must be a FHIR resource type, e.g. CarePlan"})
	}
	lq.PatientID = patientParam(q, &bad)
	timeParam(q, "from", &lq.From, &bad)
	timeParam(q, "to", &lq.To, &bad)
	pageParams(q, ndjson, &lq.Limit, &lq.Cursor, &bad)
	if len(bad) > 0 {
		return badRequest("invalid query", bad...)
	}
	ctx := c.Request().Context()
	if !ndjson {
		page, err := h.audit.SyncLedger(ctx, lq)
		if err != nil {
			return err
		}
		out := make([]ledgerJSON, len(page.Entries))
		for i, e := range page.Entries {
			out[i] = toLedgerJSON(e)
		}
		return c.JSON(http.StatusOK, listJSON(c, "entries", out, page.Next))
	}
	lq.Limit = auditMaxLimit
	return export(c, func(ctx context.Context, cursor int64) ([][]byte, int64, error) {
		lq.Cursor = cursor
		page, err := h.audit.SyncLedger(ctx, lq)
		if err != nil {
			return nil, 0, err
		}
		lines := make([][]byte, len(page.Entries))
		for i, e := range page.Entries {
			if lines[i], err = json.Marshal(toLedgerJSON(e)); err != nil {
				return nil, 0, err
			}
		}
		return lines, page.Next, nil
	}, lq.Cursor)
}

// listJSON is one page of a listing: the items under name, and, when there
// is more, the cursor and the link of the next page.
func listJSON[T any](c echo.Context, name string, items []T, next int64) map[string]any {
	out := map[string]any{name: items}
	if next > 0 {
		q := c.QueryParams()
		nq := url.Values{}
		for k, v := range q {
			nq[k] = v
		}
		nq.Set("cursor", strconv.FormatInt(next, 10))
		out["nextCursor"] = next
		out["next"] = c.Request().URL.Path + "?" + nq.Encode()
	}
	return out
}

// export streams every page that read returns, from cursor on, one line
// per item. The first page is read before anything is written, so a
// failing store is still a problem response; a failure after that ends the
// body early, with the trailer exportTrailer "failed" (else "complete").
func export(c echo.Context, read func(ctx context.Context, cursor int64) ([][]byte, int64, error), cursor int64) error {
	ctx := c.Request().Context()
	lines, next, err := read(ctx, cursor)
	if err != nil {
		return err
	}
	res := c.Response()
	res.Header().Set(echo.HeaderContentType, ndjsonType)
	res.Header().Set("Trailer", exportTrailer)
	res.Header().Set("Cache-Control", "no-store")
	res.WriteHeader(http.StatusOK)
	var buf bytes.Buffer
	for {
		buf.Reset()
		for _, l := range lines {
			if err := writeLine(&buf, l); err != nil {
				res.Header().Set(http.TrailerPrefix+exportTrailer, "failed")
				return err
			}
		}
		if _, err := res.Write(buf.Bytes()); err != nil {
			res.Header().Set(http.TrailerPrefix+exportTrailer, "failed")
			return err
		}
		// Best effort: a writer that holds the response back cannot flush.
		_ = http.NewResponseController(res.Writer).Flush()
		if next == 0 {
			break
		}
		if lines, next, err = read(ctx, next); err != nil {
			res.Header().Set(http.TrailerPrefix+exportTrailer, "failed")
			return err
		}
	}
	res.Header().Set(http.TrailerPrefix+exportTrailer, "complete")
	return nil
}

// writeLine appends one JSON object as one line. The bytes are kept as they
// are unless they span lines, when only their whitespace is compacted.
func writeLine(buf *bytes.Buffer, b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return treatment.Errorf(treatment.KindInternal, "an exported item is empty")
	}
	if bytes.ContainsAny(b, "\r\n") {
		if err := json.Compact(buf, b); err != nil {
			return err
		}
	} else {
		buf.Write(b)
	}
	buf.WriteByte('\n')
	return nil
}

// exportFormat reports whether the caller asked for NDJSON: format=ndjson,
// or no format and an Accept header naming application/x-ndjson.
func exportFormat(c echo.Context, bad *[]treatment.FieldError) bool {
	switch c.QueryParam("format") {
	case "ndjson":
		return true
	case "json":
		return false
	case "":
	default:
		*bad = append(*bad, treatment.FieldError{Field: "format", Reason: "must be json or ndjson"})
		return false
	}
	for _, part := range strings.Split(c.Request().Header.Get(echo.HeaderAccept), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == ndjsonType {
			return true
		}
	}
	return false
}

// pageParams reads limit and cursor. An export reads every page, so it
// takes a cursor (to resume) but no limit.
func pageParams(q url.Values, ndjson bool, limit *int, cursor *int64, bad *[]treatment.FieldError) {
	if ndjson && q.Get("limit") != "" {
		*bad = append(*bad, treatment.FieldError{Field: "limit", Reason: "an NDJSON export has no limit: it streams every page"})
	} else {
		intParam(q, "limit", 1, auditMaxLimit, "must be 1 to 1000", limit, bad)
	}
	intParam(q, "cursor", 1, math.MaxInt64, "must be the nextCursor of a previous page", cursor, bad)
}

// timeParam reads an optional time bound: an RFC 3339 date-time with a
// zone, or a date (its midnight, UTC). Bounds are from <= time < to.
func timeParam(q url.Values, name string, dst *time.Time, bad *[]treatment.FieldError) {
	v := q.Get(name)
	if v == "" {
		return
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		t, err = time.Parse(time.DateOnly, v)
	}
	if err != nil {
		*bad = append(*bad, treatment.FieldError{Field: name, Reason: "must be an RFC 3339 date-time with a zone (e.g. 2026-03-01T00:00:00Z) or a date (2026-03-01, midnight UTC)"})
		return
	}
	*dst = t.UTC()
}

// patientParam reads an optional patientId.
func patientParam(q url.Values, bad *[]treatment.FieldError) string {
	v := q.Get("patientId")
	if v != "" && !idRE.MatchString(v) {
		*bad = append(*bad, treatment.FieldError{Field: "patientId", Reason: "is not a valid id"})
		return ""
	}
	return v
}

// listParam reads an optional comma-separated list.
func listParam(q url.Values, name string) []string {
	var out []string
	for v := range strings.SplitSeq(q.Get(name), ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// unknownParams adds a problem for every query parameter not in known.
func unknownParams(q url.Values, bad *[]treatment.FieldError, known ...string) {
	reason := "unknown query parameter (supported: none)"
	if len(known) > 0 {
		reason = "unknown query parameter (supported: " + strings.Join(known, ", ") + ")"
	}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if !slices.Contains(known, k) {
			*bad = append(*bad, treatment.FieldError{Field: k, Reason: reason})
		}
	}
}

var knownAuditTypes = map[audit.Type]bool{
	audit.TypeRest: true, audit.TypeApplicationActivity: true, audit.TypeAuditLogUsed: true,
	audit.TypeSecurityAlert: true, audit.TypeUserAuthentication: true,
}
