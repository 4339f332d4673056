package api

import (
	"context"
	"net/http"
	"regexp"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/treatment"
)

// Service is what the domain API needs from the application layer.
type Service interface {
	Protocols() []treatment.Protocol
	Protocol(id string) (treatment.Protocol, error)
	CreatePatient(ctx context.Context, in app.PatientInput) (treatment.Patient, error)
	Patient(ctx context.Context, id string) (treatment.Patient, error)
	CreateProgram(ctx context.Context, in app.ProgramInput) (treatment.Program, error)
	Program(ctx context.Context, id string) (treatment.Program, error)
	Programs(ctx context.Context, patientID string) ([]treatment.Program, error)
	UpdateSession(ctx context.Context, id string, in app.SessionChange) (treatment.Program, error)
	AddPlan(ctx context.Context, programID string, in app.PlanInput) (treatment.Program, error)
	AddMeasurement(ctx context.Context, in app.MeasurementInput) (treatment.Program, treatment.Measurement, error)
}

// Handlers serve /api/v1.
type Handlers struct {
	svc     Service
	sync    Sync
	clients Clients
	audit   Audit
	// FHIRBase, when set, is the absolute FHIR base used for links in responses.
	fhirBase string
}

// New returns the handlers. fhirBase ("" = derived per request) is used to
// link programmes to their FHIR resources.
func New(svc Service, fhirBase string) *Handlers { return &Handlers{svc: svc, fhirBase: fhirBase} }

// Register mounts the routes on g (mounted at /api/v1 by the caller).
func (h *Handlers) Register(g *echo.Group) {
	g.GET("/protocols", h.listProtocols)
	g.GET("/protocols/:id", h.getProtocol)
	g.POST("/patients", h.createPatient)
	g.GET("/patients/:id", h.getPatient)
	g.POST("/programs", h.createProgram)
	g.GET("/programs", h.listPrograms)
	g.GET("/programs/:id", h.getProgram)
	g.POST("/programs/:id/boosters", h.addPlan)
	g.PATCH("/sessions/:id", h.patchSession)
	g.POST("/measurements", h.addMeasurement)
	h.registerSync(g)
	h.registerClients(g)
	h.registerAudit(g)
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// pathID returns the :id path parameter, or a 404 when it cannot be an id.
func pathID(c echo.Context, what string) (string, error) {
	id := c.Param("id")
	if !idRE.MatchString(id) {
		return "", treatment.NotFound(what, id)
	}
	return id, nil
}

func (h *Handlers) listProtocols(c echo.Context) error {
	ps := h.svc.Protocols()
	out := make([]protocolJSON, len(ps))
	for i, p := range ps {
		out[i] = toProtocolJSON(p, h.base(c))
	}
	return c.JSON(http.StatusOK, map[string]any{"protocols": out})
}

func (h *Handlers) getProtocol(c echo.Context) error {
	id, err := pathID(c, "protocol")
	if err != nil {
		return err
	}
	p, err := h.svc.Protocol(id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toProtocolJSON(p, h.base(c)))
}

func (h *Handlers) createPatient(c echo.Context) error {
	var in patientIn
	if err := decode(c, &in); err != nil {
		return err
	}
	p, err := h.svc.CreatePatient(c.Request().Context(), app.PatientInput{
		Identifiers: in.Identifier, Family: in.Name.Family, Given: in.Name.Given,
		BirthDate: in.BirthDate, Gender: in.Gender,
	})
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/patients/"+p.ID)
	return c.JSON(http.StatusCreated, toPatientJSON(p, h.base(c)))
}

func (h *Handlers) getPatient(c echo.Context) error {
	id, err := pathID(c, "patient")
	if err != nil {
		return err
	}
	p, err := h.svc.Patient(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toPatientJSON(p, h.base(c)))
}

func (h *Handlers) createProgram(c echo.Context) error {
	var in programIn
	if err := decode(c, &in); err != nil {
		return err
	}
	p, err := h.svc.CreateProgram(c.Request().Context(), app.ProgramInput{
		PatientID: in.PatientID, ProtocolID: in.ProtocolID, Start: in.Start, Timezone: in.Timezone,
		Doses: in.Doses, Route: in.Route, Indication: in.Indication,
	})
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/programs/"+p.ID)
	return c.JSON(http.StatusCreated, toProgramJSON(p, h.base(c)))
}

func (h *Handlers) getProgram(c echo.Context) error {
	id, err := pathID(c, "programme")
	if err != nil {
		return err
	}
	p, err := h.svc.Program(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toProgramJSON(p, h.base(c)))
}

func (h *Handlers) listPrograms(c echo.Context) error {
	for k := range c.QueryParams() {
		if k != "patientId" {
			return badRequest("unknown query parameter", treatment.FieldError{Field: k, Reason: "unknown query parameter (supported: patientId)"})
		}
	}
	pid := c.QueryParam("patientId")
	if pid == "" {
		return badRequest("patientId is required", treatment.FieldError{Field: "patientId", Reason: "is required"})
	}
	if !idRE.MatchString(pid) {
		return badRequest("invalid patientId", treatment.FieldError{Field: "patientId", Reason: "is not a valid id"})
	}
	ps, err := h.svc.Programs(c.Request().Context(), pid)
	if err != nil {
		return err
	}
	out := make([]programJSON, len(ps))
	for i, p := range ps {
		out[i] = toProgramJSON(p, h.base(c))
	}
	return c.JSON(http.StatusOK, map[string]any{"programs": out})
}

func (h *Handlers) patchSession(c echo.Context) error {
	id, err := pathID(c, "session")
	if err != nil {
		return err
	}
	var in sessionPatch
	if err := decode(c, &in); err != nil {
		return err
	}
	p, err := h.svc.UpdateSession(c.Request().Context(), id, app.SessionChange{Status: in.Status, Start: in.Start, End: in.End})
	if err != nil {
		return err
	}
	pj := toProgramJSON(p, h.base(c))
	for _, s := range pj.Sessions {
		if s.ID == id {
			return c.JSON(http.StatusOK, map[string]any{"session": s, "program": pj})
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"program": pj})
}

func (h *Handlers) addPlan(c echo.Context) error {
	id, err := pathID(c, "programme")
	if err != nil {
		return err
	}
	var in planIn
	if err := decode(c, &in); err != nil {
		return err
	}
	p, err := h.svc.AddPlan(c.Request().Context(), id, app.PlanInput{ProtocolID: in.ProtocolID, Count: in.Count, Start: in.Start})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, toProgramJSON(p, h.base(c)))
}

func (h *Handlers) addMeasurement(c echo.Context) error {
	var in measurementIn
	if err := decode(c, &in); err != nil {
		return err
	}
	m, err := in.toDomain()
	if err != nil {
		return err
	}
	p, m, err := h.svc.AddMeasurement(c.Request().Context(), app.MeasurementInput{ProgramID: in.ProgramID, Measurement: m})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{
		"measurement": toMeasurementJSON(m, h.base(c)),
		"outcome":     p.Outcome,
		"programId":   p.ID,
	})
}

// base is the absolute FHIR base for links.
func (h *Handlers) base(c echo.Context) string {
	if h.fhirBase != "" {
		return h.fhirBase
	}
	return c.Scheme() + "://" + c.Request().Host + "/fhir"
}
