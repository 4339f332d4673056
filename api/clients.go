package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/treatment"
)

// Clients is the API client registry (package access).
type Clients interface {
	Clients(ctx context.Context) ([]auth.Client, error)
	Client(ctx context.Context, id string) (auth.Client, error)
	PutClient(ctx context.Context, c auth.Client, agent audit.Agent) (auth.Client, bool, error)
	DeleteClient(ctx context.Context, id string, agent audit.Agent) error
}

// WithClients adds the client registry routes (/clients).
func (h *Handlers) WithClients(c Clients) *Handlers {
	h.clients = c
	return h
}

func (h *Handlers) registerClients(g *echo.Group) {
	if h.clients == nil {
		return
	}
	g.GET("/clients", h.listClients)
	g.POST("/clients", h.createClient)
	g.GET("/clients/:id", h.getClient)
	g.PUT("/clients/:id", h.putClient)
	g.DELETE("/clients/:id", h.deleteClient)
}

// clientJSON is a client as the API reads and writes it.
type clientJSON struct {
	ID      string         `json:"clientId"`
	Name    string         `json:"name,omitempty"`
	JWKS    map[string]any `json:"jwks,omitempty"`
	JWKSURL string         `json:"jwksUrl,omitempty"`
	Scopes  []string       `json:"scopes"`
	Role    string         `json:"role"`
	Created *time.Time     `json:"created,omitempty"`
	Updated *time.Time     `json:"updated,omitempty"`
}

func toClientJSON(c auth.Client) clientJSON {
	out := clientJSON{ID: c.ID, Name: c.Name, JWKSURL: c.JWKSURL, Scopes: c.Scopes, Role: string(c.Role), Created: &c.Created, Updated: &c.Updated}
	if len(c.JWKS) > 0 {
		_ = json.Unmarshal(c.JWKS, &out.JWKS) // public keys only: validated on registration
	}
	return out
}

func (in clientJSON) client() (auth.Client, error) {
	c := auth.Client{ID: in.ID, Name: in.Name, JWKSURL: in.JWKSURL, Scopes: in.Scopes, Role: auth.Role(in.Role)}
	if in.JWKS != nil {
		b, err := json.Marshal(in.JWKS)
		if err != nil {
			return c, badRequest("jwks is not a JSON object")
		}
		c.JWKS = b
	}
	return c, nil
}

func (h *Handlers) listClients(c echo.Context) error {
	cs, err := h.clients.Clients(c.Request().Context())
	if err != nil {
		return err
	}
	out := make([]clientJSON, len(cs))
	for i, cl := range cs {
		out[i] = toClientJSON(cl)
	}
	return c.JSON(http.StatusOK, map[string]any{"clients": out})
}

func (h *Handlers) getClient(c echo.Context) error {
	cl, err := h.clients.Client(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toClientJSON(cl))
}

func (h *Handlers) createClient(c echo.Context) error {
	var in clientJSON
	if err := decode(c, &in); err != nil {
		return err
	}
	ctx := c.Request().Context()
	if _, err := h.clients.Client(ctx, in.ID); err == nil {
		return &treatment.Error{Kind: treatment.KindConflict, Msg: "client " + in.ID + " already exists (PUT /clients/" + in.ID + " replaces it)"}
	}
	return h.saveClient(c, in, http.StatusCreated)
}

func (h *Handlers) putClient(c echo.Context) error {
	var in clientJSON
	if err := decode(c, &in); err != nil {
		return err
	}
	if in.ID == "" {
		in.ID = c.Param("id")
	}
	if in.ID != c.Param("id") {
		return treatment.Invalid("invalid client", treatment.FieldError{Field: "clientId", Reason: "must match the path"})
	}
	return h.saveClient(c, in, http.StatusOK)
}

func (h *Handlers) saveClient(c echo.Context, in clientJSON, status int) error {
	cl, err := in.client()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	saved, created, err := h.clients.PutClient(ctx, cl, audit.AgentFrom(ctx))
	if err != nil {
		return err
	}
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, toClientJSON(saved))
}

func (h *Handlers) deleteClient(c echo.Context) error {
	ctx := c.Request().Context()
	if err := h.clients.DeleteClient(ctx, c.Param("id"), audit.AgentFrom(ctx)); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
