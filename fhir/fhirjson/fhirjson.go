// Package fhirjson is kapfhir's one FHIR R4 JSON codec, built on
// google/fhir/go's jsonformat. Resources are rendered once, on write; the read
// path serves the stored bytes and never comes back here.
package fhirjson

import (
	"fmt"
	"sync"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	"google.golang.org/protobuf/proto"
)

var (
	once       sync.Once
	marshaller *jsonformat.Marshaller
	validating *jsonformat.Unmarshaller
	trusted    *jsonformat.Unmarshaller
	initErr    error
)

func setup() error {
	once.Do(func() {
		marshaller, initErr = jsonformat.NewMarshaller(false, "", "", fhirversion.R4)
		if initErr != nil {
			return
		}
		validating, initErr = jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
		if initErr != nil {
			return
		}
		trusted, initErr = jsonformat.NewUnmarshallerWithoutValidation("UTC", fhirversion.R4)
	})
	return initErr
}

// Marshal renders a resource proto (e.g. *cppb.CarePlan) as compact FHIR JSON.
func Marshal(res proto.Message) ([]byte, error) {
	if err := setup(); err != nil {
		return nil, fmt.Errorf("fhirjson: %w", err)
	}
	b, err := marshaller.MarshalResource(res)
	if err != nil {
		return nil, fmt.Errorf("fhirjson: marshal %s: %w", res.ProtoReflect().Descriptor().Name(), err)
	}
	return b, nil
}

// UnmarshalStored parses FHIR R4 JSON that kapfhir rendered itself (a
// stored version, validated when it was written) without validating it
// again; anything else goes through Unmarshal.
func UnmarshalStored(b []byte) (*bcrpb.ContainedResource, error) {
	return unmarshal(false, b)
}

// Unmarshal parses and validates FHIR R4 JSON (required fields, cardinality,
// value sets of required bindings, reference types, primitive formats) and
// returns the ContainedResource that wraps it.
func Unmarshal(b []byte) (*bcrpb.ContainedResource, error) {
	return unmarshal(true, b)
}

func unmarshal(validate bool, b []byte) (*bcrpb.ContainedResource, error) {
	if err := setup(); err != nil {
		return nil, fmt.Errorf("fhirjson: %w", err)
	}
	u := trusted
	if validate {
		u = validating
	}
	msg, err := u.Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("fhirjson: %w", err)
	}
	cr, ok := msg.(*bcrpb.ContainedResource)
	if !ok {
		return nil, fmt.Errorf("fhirjson: unexpected %T", msg)
	}
	return cr, nil
}

// Validate reports whether b is a valid FHIR R4 resource according to jsonformat.
func Validate(b []byte) error {
	_, err := Unmarshal(b)
	return err
}
