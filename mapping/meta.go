package mapping

import (
	"crypto/sha256"
	"strconv"
	"time"

	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kapfhir/kapfhir/resource"
)

// ContentHash is the SHA-256 of the resource type and the deterministic proto
// encoding of the resource with meta.versionId and meta.lastUpdated cleared,
// so that storing unchanged content again does not create a new version.
// meta.profile is content (the mappers set it) and is part of the hash.
func ContentHash(r Resource) []byte {
	h := sha256.New()
	if r.Msg == nil {
		return h.Sum(nil)
	}
	msg := r.Msg
	if mf := metaField(msg); mf != nil && msg.ProtoReflect().Has(mf) {
		msg = proto.Clone(msg)
		m := msg.ProtoReflect()
		if meta, ok := m.Get(mf).Message().Interface().(*d4pb.Meta); ok {
			meta.VersionId = nil
			meta.LastUpdated = nil
			if proto.Size(meta) == 0 {
				m.Clear(mf)
			}
		}
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		// Resource protos are always encodable; hash the type alone rather
		// than panic, so a (never expected) failure re-versions the resource.
		b = nil
	}
	h.Write([]byte(msg.ProtoReflect().Descriptor().FullName()))
	h.Write([]byte{0})
	h.Write(b)
	return h.Sum(nil)
}

// SetMeta sets meta.versionId and meta.lastUpdated (in UTC) on the resource
// proto, keeping the profiles the mapper set.
func SetMeta(r Resource, versionID int64, lastUpdated time.Time) {
	if r.Msg == nil {
		return
	}
	mf := metaField(r.Msg)
	if mf == nil {
		return
	}
	m := r.Msg.ProtoReflect()
	meta, ok := m.Mutable(mf).Message().Interface().(*d4pb.Meta)
	if !ok {
		return
	}
	meta.VersionId = fhirID(strconv.FormatInt(versionID, 10))
	meta.LastUpdated = instant(lastUpdated.UTC())
}

// metaField returns the resource's "meta" field descriptor, or nil.
func metaField(msg proto.Message) protoreflect.FieldDescriptor {
	fd := msg.ProtoReflect().Descriptor().Fields().ByName("meta")
	if fd == nil || fd.Kind() != protoreflect.MessageKind {
		return nil
	}
	return fd
}

// Write is r as version versionID of its resource, stored at lastUpdated:
// meta set, rendered once with render (fhirjson.Marshal), with its content
// hash and search index. hash, when not nil, is r's ContentHash already
// computed.
func Write(r Resource, versionID int64, lastUpdated time.Time, hash []byte, render func(proto.Message) ([]byte, error)) (resource.Write, error) {
	if hash == nil {
		hash = ContentHash(r)
	}
	SetMeta(r, versionID, lastUpdated)
	b, err := render(r.Msg)
	if err != nil {
		return resource.Write{}, err
	}
	return resource.Write{
		Version: resource.Version{Type: r.Type, ID: r.ID, VersionID: versionID, LastUpdated: lastUpdated, JSON: b},
		Hash:    hash,
		Index:   Index(r),
	}, nil
}
