package api

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/adapter"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/treatment"
)

// Sync is what the operators' API needs from the sync side (adapter.Manager).
type Sync interface {
	Endpoints(ctx context.Context) ([]endpoint.Stored, error)
	Endpoint(ctx context.Context, id string) (endpoint.Stored, error)
	CreateEndpoint(ctx context.Context, e endpoint.Endpoint) (endpoint.Stored, error)
	UpdateEndpoint(ctx context.Context, e endpoint.Endpoint) (endpoint.Stored, error)
	DeleteEndpoint(ctx context.Context, id string) error
	Test(ctx context.Context, id string) (adapter.Report, error)
	Status(ctx context.Context, id string) (adapter.Status, error)
	WaitDrained(ctx context.Context, id string) (adapter.Status, bool, error)
	Backfill(ctx context.Context, id string) (int, error)
	PullNow(ctx context.Context, id string) (int, error)
	Items(ctx context.Context, f outbox.Filter) ([]outbox.Item, error)
	Item(ctx context.Context, id int64) (outbox.Item, error)
	Replay(ctx context.Context, id int64, actor string) error
	ReplayDead(ctx context.Context, endpointID, actor string) (int, error)
	Discard(ctx context.Context, id int64, actor string) error
	Log(ctx context.Context, endpointID string, beforeID int64, limit int) ([]outbox.Event, error)
}

// WithSync adds the endpoint and sync routes.
func (h *Handlers) WithSync(s Sync) *Handlers {
	h.sync = s
	return h
}

func (h *Handlers) registerSync(g *echo.Group) {
	if h.sync == nil {
		return
	}
	g.GET("/endpoints", h.listEndpoints)
	g.POST("/endpoints", h.createEndpoint)
	g.GET("/endpoints/:id", h.getEndpoint)
	g.PUT("/endpoints/:id", h.putEndpoint)
	g.DELETE("/endpoints/:id", h.deleteEndpoint)
	g.POST("/endpoints/:id/test", h.testEndpoint)
	g.GET("/endpoints/:id/status", h.endpointStatus)
	g.POST("/endpoints/:id/replay-dead", h.replayDead)
	g.POST("/endpoints/:id/backfill", h.backfill)
	g.POST("/endpoints/:id/pull", h.pullNow)
	g.GET("/sync/items", h.listItems)
	g.GET("/sync/items/:id", h.getItem)
	g.POST("/sync/items/:id/replay", h.replayItem)
	g.POST("/sync/items/:id/discard", h.discardItem)
	g.GET("/sync/log", h.syncLog)
}

// actor is who an operator action is recorded as: the authenticated client.
func actor(c echo.Context) string { return "client:" + audit.AgentFrom(c.Request().Context()).ClientID }

func (h *Handlers) listEndpoints(c echo.Context) error {
	eps, err := h.sync.Endpoints(c.Request().Context())
	if err != nil {
		return err
	}
	if eps == nil {
		eps = []endpoint.Stored{}
	}
	return c.JSON(http.StatusOK, map[string]any{"endpoints": eps})
}

func (h *Handlers) getEndpoint(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	e, err := h.sync.Endpoint(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, e)
}

func (h *Handlers) createEndpoint(c echo.Context) error {
	e := endpoint.Defaults()
	if err := decode(c, &e); err != nil {
		return err
	}
	st, err := h.sync.CreateEndpoint(c.Request().Context(), e)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/endpoints/"+st.ID)
	return c.JSON(http.StatusCreated, st)
}

func (h *Handlers) putEndpoint(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	e := endpoint.Defaults()
	if err := decode(c, &e); err != nil {
		return err
	}
	if e.ID == "" {
		e.ID = id
	}
	if e.ID != id {
		return treatment.Invalid("invalid endpoint", treatment.FieldError{Field: "id", Reason: "must match the id in the path"})
	}
	st, err := h.sync.UpdateEndpoint(c.Request().Context(), e)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, st)
}

func (h *Handlers) deleteEndpoint(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	if err := h.sync.DeleteEndpoint(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (h *Handlers) testEndpoint(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	r, err := h.sync.Test(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, r)
}

type budgetJSON struct {
	PerSecond           float64 `json:"perSecond"`
	Burst               int     `json:"burst"`
	ConfiguredPerSecond float64 `json:"configuredPerSecond"`
}

type statusJSON struct {
	Endpoint          string         `json:"endpoint"`
	Enabled           bool           `json:"enabled"`
	Running           bool           `json:"running"`
	AuthState         string         `json:"authState"`
	Backlog           int            `json:"backlog"`
	Drained           bool           `json:"drained"`
	OldestPendingAge  *float64       `json:"oldestPendingAgeSeconds,omitempty"`
	ByState           map[string]int `json:"byState"`
	Sent              int            `json:"sent"`
	Failed            int            `json:"failed"`
	Dead              int            `json:"dead"`
	LastError         string         `json:"lastError,omitempty"`
	LastErrorAt       *time.Time     `json:"lastErrorAt,omitempty"`
	EndpointLastError string         `json:"endpointLastError,omitempty"`
	Budget            *budgetJSON    `json:"rateBudget,omitempty"`
	Writes            *writesJSON    `json:"writes,omitempty"`
}

// writesJSON is how the worker writes, once it has read the EHR's
// CapabilityStatement: "transaction" (a patient's batch per transaction
// Bundle, at most maxTransactionEntries when the EHR was seen to refuse
// more) or "per-resource".
type writesJSON struct {
	Strategy              string `json:"strategy"`
	MaxTransactionEntries int    `json:"maxTransactionEntries,omitempty"`
}

func (h *Handlers) endpointStatus(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	q := c.QueryParams()
	var bad []treatment.FieldError
	for k := range q {
		if k != "wait" && k != "timeout" {
			bad = append(bad, treatment.FieldError{Field: k, Reason: "unknown query parameter (supported: wait, timeout)"})
		}
	}
	wait := q.Get("wait")
	if wait != "" && wait != "drained" {
		bad = append(bad, treatment.FieldError{Field: "wait", Reason: "must be drained"})
	}
	timeout := 30 * time.Second
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > 10*time.Minute {
			bad = append(bad, treatment.FieldError{Field: "timeout", Reason: "must be a duration up to 10m, e.g. 30s"})
		}
		timeout = d
	}
	if len(bad) > 0 {
		return badRequest("invalid query", bad...)
	}
	var s adapter.Status
	if wait == "drained" {
		// Long poll: answer once the queue has drained, or at the timeout.
		ctx, cancel := context.WithTimeout(c.Request().Context(), timeout)
		defer cancel()
		s, _, err = h.sync.WaitDrained(ctx, id)
	} else {
		s, err = h.sync.Status(c.Request().Context(), id)
	}
	if err != nil {
		return err
	}
	out := statusJSON{
		Endpoint: s.Endpoint.ID, Enabled: s.Endpoint.Enabled, Running: s.Running, AuthState: string(s.Endpoint.AuthState),
		ByState: map[string]int{}, Sent: s.Queue.Sent, Failed: s.Queue.Failed, Dead: s.Queue.Dead,
		LastError: s.Queue.LastError, EndpointLastError: s.Endpoint.LastError,
	}
	for _, st := range outbox.States {
		out.ByState[string(st)] = s.Queue.ByState[st]
	}
	out.Backlog = s.Queue.Backlog()
	out.Drained = out.Backlog == 0
	if !s.Queue.OldestPending.IsZero() {
		age := max(time.Since(s.Queue.OldestPending).Seconds(), 0)
		out.OldestPendingAge = &age
	}
	if !s.Queue.LastErrorAt.IsZero() {
		t := s.Queue.LastErrorAt.UTC()
		out.LastErrorAt = &t
	}
	if s.Budget != nil {
		out.Budget = &budgetJSON{PerSecond: s.Budget.PerSecond, Burst: s.Budget.Burst, ConfiguredPerSecond: s.Budget.ConfiguredPerSecond}
	}
	if w := s.Writes; w != nil && w.Known {
		out.Writes = &writesJSON{Strategy: "per-resource"}
		if w.Transactions {
			out.Writes = &writesJSON{Strategy: "transaction", MaxTransactionEntries: w.MaxEntries}
		}
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handlers) replayDead(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	n, err := h.sync.ReplayDead(c.Request().Context(), id, actor(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]int{"replayed": n})
}

func (h *Handlers) backfill(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	n, err := h.sync.Backfill(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusAccepted, map[string]int{"queued": n})
}

func (h *Handlers) pullNow(c echo.Context) error {
	id, err := pathID(c, "endpoint")
	if err != nil {
		return err
	}
	n, err := h.sync.PullNow(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]int{"applied": n})
}

type itemJSON struct {
	ID           int64      `json:"id"`
	Endpoint     string     `json:"endpoint"`
	ResourceType string     `json:"resourceType"`
	ResourceID   string     `json:"resourceId"`
	PatientID    string     `json:"patientId"`
	State        string     `json:"state"`
	WantVersion  int64      `json:"wantVersion"`
	SentVersion  int64      `json:"sentVersion"`
	EHRID        string     `json:"ehrId,omitempty"`
	EHRVersion   string     `json:"ehrVersion,omitempty"`
	Attempts     int        `json:"attempts"`
	NextAttempt  *time.Time `json:"nextAttempt,omitempty"`
	LastStatus   int        `json:"lastStatus,omitempty"`
	LastError    string     `json:"lastError,omitempty"`
	// Outcome is the EHR's OperationOutcome, as the EHR sent it.
	Outcome json.RawMessage `json:"operationOutcome,omitempty"`
	Updated time.Time       `json:"updated"`
}

func toItemJSON(it outbox.Item) itemJSON {
	out := itemJSON{
		ID: it.ID, Endpoint: it.EndpointID, ResourceType: it.ResourceType, ResourceID: it.ResourceID, PatientID: it.PatientID,
		State: string(it.State), WantVersion: it.WantVersion, SentVersion: it.SentVersion, EHRID: it.EHRID, EHRVersion: it.EHRVersion,
		Attempts: it.Attempts, LastStatus: it.LastStatus, LastError: it.LastError, Updated: it.Updated.UTC(),
	}
	if it.State == outbox.Pending || it.State == outbox.Retrying {
		t := it.NextAttempt.UTC()
		out.NextAttempt = &t
	}
	if json.Valid(it.Outcome) {
		out.Outcome = it.Outcome
	}
	return out
}

func (h *Handlers) listItems(c echo.Context) error {
	q := c.QueryParams()
	f := outbox.Filter{EndpointID: q.Get("endpoint"), PatientID: q.Get("patientId"), State: outbox.State(q.Get("state")), Limit: 100}
	var bad []treatment.FieldError
	for k := range q {
		switch k {
		case "endpoint", "patientId", "state", "after", "limit":
		default:
			bad = append(bad, treatment.FieldError{Field: k, Reason: "unknown query parameter (supported: endpoint, state, patientId, after, limit)"})
		}
	}
	if f.State != "" && !f.State.Valid() {
		bad = append(bad, treatment.FieldError{Field: "state", Reason: "must be one of pending, in_flight, retrying, succeeded, dead, discarded"})
	}
	intParam(q, "after", 0, math.MaxInt64, "must be an item id", &f.AfterID, &bad)
	intParam(q, "limit", 1, 1000, "must be 1 to 1000", &f.Limit, &bad)
	if len(bad) > 0 {
		return badRequest("invalid query", bad...)
	}
	items, err := h.sync.Items(c.Request().Context(), f)
	if err != nil {
		return err
	}
	out := make([]itemJSON, len(items))
	for i, it := range items {
		out[i] = toItemJSON(it)
	}
	resp := map[string]any{"items": out}
	if len(items) == f.Limit {
		next := url.Values{}
		for k, v := range q {
			next[k] = v
		}
		next.Set("after", strconv.FormatInt(items[len(items)-1].ID, 10))
		resp["next"] = "/api/v1/sync/items?" + next.Encode()
	}
	return c.JSON(http.StatusOK, resp)
}

// intParam reads an optional integer query parameter into *dst, adding a
// problem when it is not an integer from lo to hi.
func intParam[T int | int64](q url.Values, name string, lo, hi T, reason string, dst *T, bad *[]treatment.FieldError) {
	v := q.Get(name)
	if v == "" {
		return
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || T(n) < lo || T(n) > hi {
		*bad = append(*bad, treatment.FieldError{Field: name, Reason: reason})
		return
	}
	*dst = T(n)
}

// itemID returns the :id path parameter as an item id, or a 404.
func itemID(c echo.Context) (int64, error) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, treatment.NotFound("sync item", c.Param("id"))
	}
	return id, nil
}

func (h *Handlers) getItem(c echo.Context) error {
	id, err := itemID(c)
	if err != nil {
		return err
	}
	it, err := h.sync.Item(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toItemJSON(it))
}

func (h *Handlers) replayItem(c echo.Context) error {
	return h.itemAction(c, h.sync.Replay)
}

func (h *Handlers) discardItem(c echo.Context) error {
	return h.itemAction(c, h.sync.Discard)
}

func (h *Handlers) itemAction(c echo.Context, act func(context.Context, int64, string) error) error {
	id, err := itemID(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	if err := act(ctx, id, actor(c)); err != nil {
		return err
	}
	it, err := h.sync.Item(ctx, id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toItemJSON(it))
}

type eventJSON struct {
	ID           int64     `json:"id"`
	At           time.Time `json:"at"`
	Endpoint     string    `json:"endpoint"`
	ItemID       int64     `json:"itemId"`
	ResourceType string    `json:"resourceType"`
	ResourceID   string    `json:"resourceId"`
	Version      int64     `json:"version"`
	Action       string    `json:"action"`
	Status       int       `json:"status,omitempty"`
	EHRID        string    `json:"ehrId,omitempty"`
	EHRVersion   string    `json:"ehrVersion,omitempty"`
	Request      string    `json:"request,omitempty"`
	Detail       string    `json:"detail,omitempty"`
	Actor        string    `json:"actor"`
}

func (h *Handlers) syncLog(c echo.Context) error {
	q := c.QueryParams()
	var bad []treatment.FieldError
	var before int64
	limit := 100
	for k := range q {
		if k != "endpoint" && k != "before" && k != "limit" {
			bad = append(bad, treatment.FieldError{Field: k, Reason: "unknown query parameter (supported: endpoint, before, limit)"})
		}
	}
	intParam(q, "before", 0, math.MaxInt64, "must be an event id", &before, &bad)
	intParam(q, "limit", 1, 1000, "must be 1 to 1000", &limit, &bad)
	if len(bad) > 0 {
		return badRequest("invalid query", bad...)
	}
	evs, err := h.sync.Log(c.Request().Context(), strings.TrimSpace(q.Get("endpoint")), before, limit)
	if err != nil {
		return err
	}
	out := make([]eventJSON, len(evs))
	for i, e := range evs {
		out[i] = eventJSON{ID: e.ID, At: e.At.UTC(), Endpoint: e.EndpointID, ItemID: e.ItemID, ResourceType: e.ResourceType, ResourceID: e.ResourceID,
			Version: e.Version, Action: e.Action, Status: e.Status, EHRID: e.EHRID, EHRVersion: e.EHRVersion, Request: e.Request, Detail: e.Detail, Actor: e.Actor}
	}
	return c.JSON(http.StatusOK, map[string]any{"events": out})
}
