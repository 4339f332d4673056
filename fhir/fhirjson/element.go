package fhirjson

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// MarshalElement renders a FHIR element that is not a resource (a datatype or
// a backbone element such as *bcrpb.Bundle_Entry) as compact FHIR JSON. The
// fhir package uses it to build Bundle entry shells around stored resource bytes.
func MarshalElement(el proto.Message) ([]byte, error) {
	if err := setup(); err != nil {
		return nil, fmt.Errorf("fhirjson: %w", err)
	}
	b, err := marshaller.MarshalElement(el)
	if err != nil {
		return nil, fmt.Errorf("fhirjson: marshal %s: %w", el.ProtoReflect().Descriptor().Name(), err)
	}
	return b, nil
}
