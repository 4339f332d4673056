// Package catalogue is kapfhir's protocol catalogue: the protocols shipped as
// YAML files embedded in the binary, plus the files of a clinic's own
// directory, which add protocols or replace shipped ones with the same id.
package catalogue

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kapfhir/kapfhir/treatment"
)

//go:embed protocols/*.yaml
var builtin embed.FS

// builtinPrefix names the shipped files in problem reports.
const builtinPrefix = "builtin/"

// Catalogue is a validated, read-only set of protocols keyed by id.
type Catalogue struct {
	byID map[string]treatment.Protocol
	ids  []string          // sorted
	file map[string]string // id -> the file it came from
}

// entry is one decoded protocol file.
type entry struct {
	file string
	p    treatment.Protocol
}

// Load reads the shipped protocols and then every *.yaml, *.yml and *.json
// file in overrideDir (when it is not empty; a missing directory is an error).
// Files are decoded strictly (an unknown field is an error) and validated with
// treatment.ValidateProtocol; every followOn id must name a booster or
// maintenance protocol of the catalogue. A file in overrideDir whose id is a
// shipped protocol's replaces it. Every problem of every file is reported in
// one KindInvalid *treatment.Error whose fields read "file: field".
func Load(overrideDir string) (*Catalogue, error) {
	var ps treatment.Problems
	var shipped, local []entry

	names, err := fs.Glob(builtin, "protocols/*.yaml")
	if err != nil {
		return nil, fmt.Errorf("catalogue: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		b, err := builtin.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("catalogue: %w", err)
		}
		if e, ok := decode(&ps, builtinPrefix+path.Base(name), b); ok {
			shipped = append(shipped, e)
		}
	}
	if overrideDir != "" {
		des, err := os.ReadDir(overrideDir)
		if err != nil {
			return nil, fmt.Errorf("catalogue: protocol directory: %w", err)
		}
		for _, de := range des {
			ext := strings.ToLower(filepath.Ext(de.Name()))
			if de.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(overrideDir, de.Name()))
			if err != nil {
				return nil, fmt.Errorf("catalogue: %w", err)
			}
			if e, ok := decode(&ps, de.Name(), b); ok {
				local = append(local, e)
			}
		}
	}

	c := &Catalogue{byID: map[string]treatment.Protocol{}, file: map[string]string{}}
	add := func(e entry, override bool) {
		if prev, dup := c.file[e.p.ID]; dup && !(override && strings.HasPrefix(prev, builtinPrefix)) {
			ps.Add(e.file+": id", "is also the id of "+prev)
			return
		}
		c.byID[e.p.ID] = e.p
		c.file[e.p.ID] = e.file
	}
	for _, e := range shipped {
		add(e, false)
	}
	seenLocal := map[string]string{}
	for _, e := range local {
		if prev, dup := seenLocal[e.p.ID]; dup {
			ps.Add(e.file+": id", "is also the id of "+prev)
			continue
		}
		seenLocal[e.p.ID] = e.file
		add(e, true)
	}
	c.ids = slices.Sorted(maps.Keys(c.byID))

	for _, id := range c.ids {
		p := c.byID[id]
		file := c.file[id]
		c.checkFollowOn(&ps, file, "followOn", p.FollowOn)
		for _, ind := range slices.Sorted(maps.Keys(p.Variants)) {
			c.checkFollowOn(&ps, file, "variants."+string(ind)+".followOn", p.Variants[ind].FollowOn)
		}
	}
	if len(ps) > 0 {
		return nil, &treatment.Error{Kind: treatment.KindInvalid, Msg: "protocol catalogue", Fields: ps}
	}
	return c, nil
}

// decode parses one protocol file strictly and validates it, recording
// problems as "file: field".
func decode(ps *treatment.Problems, file string, b []byte) (entry, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var p treatment.Protocol
	if err := dec.Decode(&p); err != nil {
		var te *yaml.TypeError
		switch {
		case errors.Is(err, io.EOF):
			ps.Add(file, "is empty")
		case errors.As(err, &te):
			for _, msg := range te.Errors {
				ps.Add(file, strings.TrimSpace(msg))
			}
		default:
			ps.Add(file, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return entry{}, false
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		ps.Add(file, "must hold exactly one protocol")
		return entry{}, false
	}
	problems := treatment.ValidateProtocol(p)
	for _, f := range problems {
		ps.Add(file+": "+f.Field, f.Reason)
	}
	// A protocol with problems still joins the catalogue, so that other
	// files' followOn references to it are not reported as well.
	return entry{file: file, p: p}, true
}

func (c *Catalogue) checkFollowOn(ps *treatment.Problems, file, field string, ids []string) {
	for i, id := range ids {
		f := fmt.Sprintf("%s: %s[%d]", file, field, i)
		switch q, ok := c.byID[id]; {
		case !ok:
			ps.Add(f, "names no protocol of the catalogue")
		case q.Kind == treatment.PlanInduction:
			ps.Add(f, "names an induction protocol (followOn protocols are boosters or maintenance)")
		}
	}
}

// Get returns the protocol with the given id. The result shares nothing with
// the catalogue, so callers may change it.
func (c *Catalogue) Get(id string) (treatment.Protocol, bool) {
	p, ok := c.byID[id]
	if !ok {
		return treatment.Protocol{}, false
	}
	return clone(p), true
}

// Lookup returns the protocol with the given id or a KindNotFound error.
func (c *Catalogue) Lookup(id string) (treatment.Protocol, error) {
	p, ok := c.Get(id)
	if !ok {
		return treatment.Protocol{}, treatment.NotFound("protocol", id)
	}
	return p, nil
}

// All returns every protocol, sorted by id.
func (c *Catalogue) All() []treatment.Protocol {
	out := make([]treatment.Protocol, 0, len(c.ids))
	for _, id := range c.ids {
		out = append(out, clone(c.byID[id]))
	}
	return out
}

// File names the file a protocol came from: "builtin/<name>.yaml" for a
// shipped one, the file name inside the clinic's directory otherwise.
func (c *Catalogue) File(id string) (string, bool) {
	f, ok := c.file[id]
	return f, ok
}

// clone deep-copies a protocol.
func clone(p treatment.Protocol) treatment.Protocol {
	p.Indications = slices.Clone(p.Indications)
	p.Routes = slices.Clone(p.Routes)
	p.Spacing.Weekdays = slices.Clone(p.Spacing.Weekdays)
	p.Preparation = ptrClone(p.Preparation)
	if p.Integration != nil {
		in := *p.Integration
		in.OffsetDays = slices.Clone(in.OffsetDays)
		p.Integration = &in
	}
	p.Reassessment = ptrClone(p.Reassessment)
	p.Measurements = slices.Clone(p.Measurements)
	p.Booster = ptrClone(p.Booster)
	p.Maintenance = ptrClone(p.Maintenance)
	p.Relapse = ptrClone(p.Relapse)
	p.FollowOn = slices.Clone(p.FollowOn)
	if p.Variants != nil {
		vs := make(map[treatment.Indication]treatment.Variant, len(p.Variants))
		for k, v := range p.Variants {
			v.Doses = ptrClone(v.Doses)
			if v.Spacing != nil {
				s := *v.Spacing
				s.Weekdays = slices.Clone(s.Weekdays)
				v.Spacing = &s
			}
			if v.Integration != nil {
				in := *v.Integration
				in.OffsetDays = slices.Clone(in.OffsetDays)
				v.Integration = &in
			}
			v.Reassessment = ptrClone(v.Reassessment)
			v.FollowOn = slices.Clone(v.FollowOn)
			vs[k] = v
		}
		p.Variants = vs
	}
	return p
}

func ptrClone[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
