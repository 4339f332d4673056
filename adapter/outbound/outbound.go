// Package outbound turns a resource as kapfhir stores it into the body sent
// to one EHR: kapfhir's ids in references become the EHR's ids, references
// to what the EHR does not hold (yet) are dropped and reported, and the
// server-assigned id and meta fields are left for the EHR to set. Pure: the
// crosswalk comes in as a function.
package outbound

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/google/fhir/go/jsonformat"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
)

// Target is where a referenced resource stands at the EHR.
type Target int

// Targets.
const (
	// Resolved: the EHR holds it, under the returned id.
	Resolved Target = iota
	// Later: it is to be sent but the EHR does not hold it yet; the reference
	// is dropped for now and reported in Prepared.Deferred.
	Later
	// Never: it is not sent to this EHR; the reference is dropped for good.
	Never
	// Bundled: it is sent in the same transaction Bundle; the returned id
	// is its entry's fullUrl (urn:uuid:...), which the reference becomes
	// and the EHR replaces with its id. Reported in Prepared.Bundled.
	Bundled
)

// Resolver maps one of kapfhir's resources to the EHR's id for it.
type Resolver func(key resource.Key) (ehrID string, t Target)

// Prepared is a body ready to send.
type Prepared struct {
	Key resource.Key
	// Identifier is kapfhir's identifier of the resource, "system|value",
	// for conditional writes and searches.
	Identifier string
	// Body is the FHIR JSON to send.
	Body []byte
	// Hash identifies Body: the same hash means the same content was sent.
	Hash []byte
	// Deferred are the dropped references to resources the EHR will hold
	// later; once it does, the resource is to be sent again.
	Deferred []resource.Key
	// MissingPatient is set when a reference to a Patient could not be
	// resolved: such a body must not be sent.
	MissingPatient *resource.Key
	// Bundled are the references made to other entries of a transaction
	// Bundle: Hash is then not what the EHR will hold, and is to be
	// computed again once their ids are known.
	Bundled []resource.Key
	// Resource is the body as a resource, for a transaction Bundle's entry.
	Resource *bcrpb.ContainedResource
}

// Prepare builds the body for stored (a FHIR JSON resource as kapfhir stores
// it). identifierSystem is kapfhir's identifier system; ehrID, when not
// empty, becomes the body's id (an update by id), else the body has no id.
func Prepare(stored []byte, identifierSystem, ehrID string, resolve Resolver) (Prepared, error) {
	p, err := Parse(stored)
	if err != nil {
		return Prepared{}, err
	}
	return p.Prepare(identifierSystem, ehrID, resolve)
}

// Parsed is a stored resource parsed once, to prepare one or more bodies
// from (parsing is most of the cost of preparing; the engine parses ahead
// while earlier writes are in flight).
type Parsed struct {
	cr *bcrpb.ContainedResource
}

// Parse parses a stored resource.
func Parse(stored []byte) (*Parsed, error) {
	cr, err := fhirjson.UnmarshalStored(stored)
	if err != nil {
		return nil, fmt.Errorf("outbound: stored resource: %w", err)
	}
	return &Parsed{cr: cr}, nil
}

// Prepare builds a body as the package-level Prepare does; the parsed
// resource is not changed (each body starts from a copy).
func (pr *Parsed) Prepare(identifierSystem, ehrID string, resolve Resolver) (Prepared, error) {
	cr := proto.Clone(pr.cr).(*bcrpb.ContainedResource)
	root, err := resourceOf(cr.ProtoReflect())
	if err != nil {
		return Prepared{}, err
	}
	desc := root.Descriptor()
	p := Prepared{Key: resource.Key{Type: string(desc.Name()), ID: idOf(root)}}
	if p.Key.ID == "" {
		return Prepared{}, errors.New("outbound: stored resource has no id")
	}
	for _, id := range identifiers(root) {
		if id.GetSystem().GetValue() == identifierSystem {
			p.Identifier = identifierSystem + "|" + id.GetValue().GetValue()
		}
	}
	if p.Identifier == "" {
		return Prepared{}, fmt.Errorf("outbound: %s has no identifier in %s", p.Key.Ref(), identifierSystem)
	}

	setID(root, ehrID)
	clearServerMeta(root)
	var rerr error
	walk(root, func(ref *d4pb.Reference) bool {
		if err := jsonformat.DenormalizeReference(ref); err != nil {
			rerr = err
			return false
		}
		uri := ref.GetUri().GetValue()
		typ, id, ok := strings.Cut(uri, "/")
		if !ok || strings.Contains(id, "/") || strings.Contains(uri, ":") {
			return false // absolute, fragment or canonical-like: leave as is
		}
		key := resource.Key{Type: typ, ID: id}
		ehr, t := resolve(key)
		switch {
		case t == Resolved && ehr != "":
			ref.Reference = &d4pb.Reference_Uri{Uri: &d4pb.String{Value: typ + "/" + ehr}}
			return false
		case t == Bundled && ehr != "":
			ref.Reference = &d4pb.Reference_Uri{Uri: &d4pb.String{Value: ehr}}
			p.Bundled = append(p.Bundled, key)
			return false
		case typ == "Patient":
			p.MissingPatient = &key
			return false
		case t == Later:
			p.Deferred = append(p.Deferred, key)
		}
		return true // drop
	})
	if rerr != nil {
		return Prepared{}, fmt.Errorf("outbound: %s: %w", p.Key.Ref(), rerr)
	}
	p.Body, err = fhirjson.Marshal(root.Interface())
	if err != nil {
		return Prepared{}, fmt.Errorf("outbound: %s: %w", p.Key.Ref(), err)
	}
	sum := sha256.Sum256(p.Body)
	p.Hash = sum[:]
	p.Resource = cr
	return p, nil
}

// resourceOf returns the resource set in a ContainedResource.
func resourceOf(cr protoreflect.Message) (protoreflect.Message, error) {
	oneof := cr.Descriptor().Oneofs().Get(0)
	fd := cr.WhichOneof(oneof)
	if fd == nil {
		return nil, errors.New("outbound: empty resource")
	}
	return cr.Get(fd).Message(), nil
}

func idOf(m protoreflect.Message) string {
	fd := m.Descriptor().Fields().ByName("id")
	if fd == nil || !m.Has(fd) {
		return ""
	}
	id, _ := m.Get(fd).Message().Interface().(*d4pb.Id)
	return id.GetValue()
}

func setID(m protoreflect.Message, id string) {
	fd := m.Descriptor().Fields().ByName("id")
	if id == "" {
		m.Clear(fd)
		return
	}
	m.Set(fd, protoreflect.ValueOfMessage((&d4pb.Id{Value: id}).ProtoReflect()))
}

func identifiers(m protoreflect.Message) []*d4pb.Identifier {
	fd := m.Descriptor().Fields().ByName("identifier")
	if fd == nil {
		return nil
	}
	var out []*d4pb.Identifier
	if fd.IsList() {
		l := m.Get(fd).List()
		for i := range l.Len() {
			out = append(out, l.Get(i).Message().Interface().(*d4pb.Identifier))
		}
	} else if m.Has(fd) {
		out = append(out, m.Get(fd).Message().Interface().(*d4pb.Identifier))
	}
	return out
}

// clearServerMeta removes meta.versionId, meta.lastUpdated and meta.source
// (the EHR assigns its own) and keeps profiles and tags.
func clearServerMeta(m protoreflect.Message) {
	fd := m.Descriptor().Fields().ByName("meta")
	if fd == nil || !m.Has(fd) {
		return
	}
	meta := m.Get(fd).Message().Interface().(*d4pb.Meta)
	meta.VersionId, meta.LastUpdated, meta.Source = nil, nil, nil
	if proto.Size(meta) == 0 {
		m.Clear(fd)
	}
}

var referenceName = (&d4pb.Reference{}).ProtoReflect().Descriptor().FullName()

// walk calls drop on every Reference below m, depth first. A reference for
// which drop returns true is removed, and so is every element left empty by
// a removal (a list element holding only that reference, say).
func walk(m protoreflect.Message, drop func(*d4pb.Reference) bool) (empty bool) {
	if m.Descriptor().FullName() == referenceName {
		return drop(m.Interface().(*d4pb.Reference))
	}
	type field struct {
		fd protoreflect.FieldDescriptor
		v  protoreflect.Value
	}
	var fields []field
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind && !fd.IsMap() {
			fields = append(fields, field{fd, v})
		}
		return true
	})
	changed := false
	for _, f := range fields {
		if f.fd.IsList() {
			l := f.v.List()
			kept := 0
			for i := range l.Len() {
				if walk(l.Get(i).Message(), drop) {
					changed = true
					continue
				}
				l.Set(kept, l.Get(i))
				kept++
			}
			l.Truncate(kept)
			if kept == 0 {
				m.Clear(f.fd)
			}
			continue
		}
		if walk(f.v.Message(), drop) {
			m.Clear(f.fd)
			changed = true
		}
	}
	if !changed {
		return false
	}
	has := false
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { has = true; return false })
	return !has
}

// Identify returns the type and id of a parsed resource.
func Identify(cr *bcrpb.ContainedResource) (resource.Key, error) {
	root, err := resourceOf(cr.ProtoReflect())
	if err != nil {
		return resource.Key{}, err
	}
	return resource.Key{Type: string(root.Descriptor().Name()), ID: idOf(root)}, nil
}

// Identifiers returns the values of a parsed resource's identifiers in system.
func Identifiers(cr *bcrpb.ContainedResource, system string) []string {
	root, err := resourceOf(cr.ProtoReflect())
	if err != nil {
		return nil
	}
	var out []string
	for _, id := range identifiers(root) {
		if id.GetSystem().GetValue() == system && id.GetValue().GetValue() != "" {
			out = append(out, id.GetValue().GetValue())
		}
	}
	return out
}
