package adapter

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/endpoint"
)

// Check is one line of an endpoint test.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Report is the result of testing an endpoint, in plain words.
type Report struct {
	Endpoint string  `json:"endpoint"`
	OK       bool    `json:"ok"`
	Checks   []Check `json:"checks"`
	// Strategies says, per resource type pushed, how kapfhir will write it
	// and why.
	Strategies map[string]string `json:"strategies"`
	// Missing lists what the EHR lacks for a full sync.
	Missing []string `json:"missing,omitempty"`
}

func (r *Report) add(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	if !ok {
		r.OK = false
	}
}

// Test fetches the EHR's CapabilityStatement and SMART configuration,
// obtains a token, and reports what works, which write strategy each type
// gets, and what is missing. A passing test clears an auth failure and
// restarts the endpoint's worker.
func (m *Manager) Test(ctx context.Context, id string) (Report, error) {
	st, err := m.o.Store.Endpoint(ctx, id)
	if err != nil {
		return Report{}, err
	}
	r := TestEndpoint(ctx, st.Endpoint, m.clientOptions())
	if r.OK && st.AuthState == endpoint.AuthFailed {
		if err := m.o.Store.SetEndpointState(ctx, id, endpoint.AuthOK, "", m.o.Now().UTC()); err != nil {
			return r, err
		}
		st.AuthState = endpoint.AuthOK
		m.log.Info("endpoint test passed: auth failure cleared", "endpoint", id)
		m.restart(st)
	}
	return r, nil
}

// TestEndpoint tests ep (see Manager.Test) without touching the store.
func TestEndpoint(ctx context.Context, ep endpoint.Endpoint, o ehrclient.Options) Report {
	r := Report{Endpoint: ep.ID, OK: true, Strategies: map[string]string{}}
	c, err := ehrclient.New(ep, o)
	if err != nil {
		r.add("configuration", false, "%v", err)
		return r
	}
	caps, err := c.Capabilities(ctx)
	if err != nil {
		r.add("capability statement", false, "GET %s/metadata failed: %v", ep.FHIRBaseURL, err)
		return r
	}
	r.add("capability statement", strings.HasPrefix(caps.FHIRVersion, "4.0"), "FHIR version %s (kapfhir needs R4, 4.0.x); %d resource types", caps.FHIRVersion, len(caps.Resources))

	if ep.Auth.Type == endpoint.AuthSMARTBackend || (ep.Auth.Type == endpoint.AuthClientSecret && ep.Auth.TokenURL == "") {
		sc, err := c.SMARTConfiguration(ctx)
		switch {
		case err != nil && ep.Auth.TokenURL == "":
			r.add("SMART configuration", false, "no token URL configured and .well-known/smart-configuration failed: %v", err)
		case err != nil:
			r.add("SMART configuration", true, "not published (%v); using the configured token URL", err)
		default:
			ok := sc.TokenEndpoint != ""
			detail := "token endpoint " + sc.TokenEndpoint
			if ep.Auth.Type == endpoint.AuthSMARTBackend {
				if len(sc.TokenEndpointAuthSigningAlgValuesSupported) > 0 && !slices.Contains(sc.TokenEndpointAuthSigningAlgValuesSupported, ep.Auth.Alg) {
					ok = false
					detail += fmt.Sprintf("; it does not list %s among its signing algorithms %v", ep.Auth.Alg, sc.TokenEndpointAuthSigningAlgValuesSupported)
				}
				if len(sc.TokenEndpointAuthMethodsSupported) > 0 && !slices.Contains(sc.TokenEndpointAuthMethodsSupported, "private_key_jwt") {
					ok = false
					detail += "; it does not offer private_key_jwt client authentication"
				}
			}
			r.add("SMART configuration", ok, "%s", detail)
		}
	}

	// An authenticated read proves the credentials: a search that matches nothing.
	q := url.Values{"identifier": {ep.PatientIdentifierSystem + "|kapfhir-endpoint-test"}, "_count": {"1"}}
	resp, err := c.Search(ctx, "Patient", q)
	switch {
	case err != nil:
		r.add("credentials", false, "an authenticated search failed: %v", err)
	case resp.Status == http.StatusOK:
		r.add("credentials", true, "%s: token obtained and accepted; patients can be found by %s", ep.Auth.Type, ep.PatientIdentifierSystem)
	case resp.Status == http.StatusForbidden:
		r.add("credentials", false, "the EHR accepted the token but refused to search Patient (403): the scope lacks patient read access")
	default:
		r.add("credentials", false, "searching Patient by identifier answered %d", resp.Status)
	}

	for _, typ := range ep.ResourceTypes {
		desc, ok := engine.Strategy(caps, typ)
		r.Strategies[typ] = desc
		if !ok {
			r.OK = false
			r.Missing = append(r.Missing, typ+": "+desc)
		}
	}
	if !caps.Supports("Patient", "search-type") {
		r.OK = false
		r.Missing = append(r.Missing, "Patient: the EHR cannot search patients, so kapfhir cannot find them by "+ep.PatientIdentifierSystem)
	}
	return r
}
