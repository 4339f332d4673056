package config

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/treatment"
)

// Endpoints are the EHR endpoints defined in the configuration file. Each is
// decoded over endpoint.Defaults, strictly (unknown keys are refused).
type Endpoints []endpoint.Endpoint

// UnmarshalYAML implements yaml.Unmarshaler.
func (es *Endpoints) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: endpoints must be a list", n.Line)
	}
	out := make(Endpoints, 0, len(n.Content))
	for _, item := range n.Content {
		b, err := yaml.Marshal(item)
		if err != nil {
			return err
		}
		e := endpoint.Defaults()
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("endpoint at line %d: %w", item.Line, err)
		}
		out = append(out, e)
	}
	*es = out
	return nil
}

// endpointSecretEnv is the environment variable that supplies a secret of
// endpoint id: KAPFHIR_ENDPOINT_<ID>_<NAME>, the id upper-cased with '-' as '_'.
func endpointSecretEnv(id, name string) string {
	return "KAPFHIR_ENDPOINT_" + strings.ToUpper(strings.ReplaceAll(id, "-", "_")) + "_" + name
}

// applyEndpointEnv fills endpoint secrets from the environment, so they need
// not be written in the file: ..._CLIENT_SECRET, ..._TOKEN, ..._PRIVATE_KEY_PEM.
func applyEndpointEnv(c *Config, lookup LookupFunc) {
	if lookup == nil {
		return
	}
	for i := range c.Endpoints {
		a := &c.Endpoints[i].Auth
		for name, dst := range map[string]*string{"CLIENT_SECRET": &a.ClientSecret, "TOKEN": &a.Token, "PRIVATE_KEY_PEM": &a.PrivateKeyPEM} {
			if v, ok := lookup(endpointSecretEnv(c.Endpoints[i].ID, name)); ok {
				*dst = v
			}
		}
	}
}

func (c Config) validateEndpoints(p *Problems) {
	seen := map[string]bool{}
	for i, e := range c.Endpoints {
		prefix := fmt.Sprintf("endpoints[%d].", i)
		if seen[e.ID] {
			p.add(prefix+"id", "%q is used by another endpoint", e.ID)
		}
		seen[e.ID] = true
		p.addFields(prefix, "id", endpoint.Validate(e))
	}
}

// addFields adds a validation error's field problems under prefix (the
// whole error under prefix+whole when it names no field).
func (p *Problems) addFields(prefix, whole string, err error) {
	var te *treatment.Error
	switch {
	case err == nil:
	case errors.As(err, &te) && len(te.Fields) > 0:
		for _, f := range te.Fields {
			p.add(prefix+f.Field, "%s", f.Reason)
		}
	default:
		p.add(prefix+whole, "%v", err)
	}
}
