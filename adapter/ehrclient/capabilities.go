package ehrclient

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/kapfhir/kapfhir/treatment"
)

// Capabilities is what the sync engine needs to know of an EHR's
// CapabilityStatement.
type Capabilities struct {
	// FHIRVersion is e.g. "4.0.1".
	FHIRVersion string
	// Transaction and Batch say whether the server accepts those Bundles.
	Transaction bool
	Batch       bool
	// Resources is keyed by resource type ("CarePlan").
	Resources map[string]ResourceCapabilities
}

// ResourceCapabilities is one rest.resource entry.
type ResourceCapabilities struct {
	// Interactions are FHIR codes: read, vread, update, patch, delete,
	// history-instance, history-type, create, search-type.
	Interactions      []string
	ConditionalCreate bool
	ConditionalUpdate bool
	// UpdateCreate says whether PUT may create a resource with a client id.
	UpdateCreate bool
}

// Supports reports whether the server supports interaction on typ.
func (c *Capabilities) Supports(typ, interaction string) bool {
	r, ok := c.Resources[typ]
	return ok && slices.Contains(r.Interactions, interaction)
}

// Capabilities reads and parses the EHR's CapabilityStatement (GET metadata).
func (c *Client) Capabilities(ctx context.Context) (*Capabilities, error) {
	resp, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "metadata", Idempotent: true})
	if err != nil {
		return nil, err
	}
	switch {
	case resp.Status == http.StatusTooManyRequests || resp.Status >= 500:
		return nil, treatment.Errorf(treatment.KindUnavailable, "endpoint %s: metadata answered %d", c.ep.ID, resp.Status)
	case resp.Status != http.StatusOK:
		return nil, treatment.Errorf(treatment.KindInvalid, "endpoint %s: metadata answered %d", c.ep.ID, resp.Status)
	}
	return parseCapabilities(c.ep.ID, resp.Body)
}

// parseCapabilities reads what the engine needs of a CapabilityStatement.
// Servers often list resource types or codes R4 lacks (R4B/R5 backports such
// as SubscriptionStatus, vendor types), so it is read field by field, never
// validated against R4 as a whole.
func parseCapabilities(id string, b []byte) (*Capabilities, error) {
	caps, err := parseLenient(b)
	if err != nil {
		return nil, &treatment.Error{Kind: treatment.KindInvalid, Msg: "endpoint " + id + ": metadata is not an R4 CapabilityStatement", Err: err}
	}
	return caps, nil
}

// lenientStatement is the part of a CapabilityStatement the engine reads.
// It is only ever read (kapfhir never writes FHIR JSON this way).
type lenientStatement struct {
	ResourceType string `json:"resourceType"`
	FHIRVersion  string `json:"fhirVersion"`
	Rest         []struct {
		Mode        string `json:"mode"`
		Interaction []struct {
			Code string `json:"code"`
		} `json:"interaction"`
		Resource []struct {
			Type        string `json:"type"`
			Interaction []struct {
				Code string `json:"code"`
			} `json:"interaction"`
			ConditionalCreate bool `json:"conditionalCreate"`
			ConditionalUpdate bool `json:"conditionalUpdate"`
			UpdateCreate      bool `json:"updateCreate"`
		} `json:"resource"`
	} `json:"rest"`
}

func parseLenient(b []byte) (*Capabilities, error) {
	var cs lenientStatement
	if err := json.Unmarshal(b, &cs); err != nil {
		return nil, err
	}
	if cs.ResourceType != "CapabilityStatement" || !strings.HasPrefix(cs.FHIRVersion, "4.") {
		return nil, errors.New("not an R4 CapabilityStatement")
	}
	caps := &Capabilities{FHIRVersion: cs.FHIRVersion, Resources: map[string]ResourceCapabilities{}}
	for _, rest := range cs.Rest {
		if rest.Mode != "server" {
			continue
		}
		for _, in := range rest.Interaction {
			caps.Transaction = caps.Transaction || in.Code == "transaction"
			caps.Batch = caps.Batch || in.Code == "batch"
		}
		for _, r := range rest.Resource {
			rc := ResourceCapabilities{ConditionalCreate: r.ConditionalCreate, ConditionalUpdate: r.ConditionalUpdate, UpdateCreate: r.UpdateCreate}
			for _, in := range r.Interaction {
				rc.Interactions = append(rc.Interactions, in.Code)
			}
			caps.Resources[r.Type] = rc
		}
	}
	return caps, nil
}
