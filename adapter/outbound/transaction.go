package outbound

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	"github.com/google/uuid"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
)

// TxEntry is one resource of a transaction Bundle.
type TxEntry struct {
	// FullURL is the entry's urn:uuid, the placeholder other entries'
	// references use (see Bundled); "" when nothing refers to it.
	FullURL string
	// Prepared is the body, from Prepare with no EHR id.
	Prepared Prepared
}

// NewPlaceholder returns a fresh urn:uuid (a random UUID) for an entry's
// fullUrl.
func NewPlaceholder() string { return uuid.New().URN() }

// ConditionalURL is the URL of a conditional update by kapfhir's
// identifier, "Type?identifier=system|value" (escaped), relative to the
// FHIR base: the path of a PUT, or a transaction entry's request.url.
func ConditionalURL(p Prepared) string {
	return p.Key.Type + "?" + IdentifierQuery(p.Identifier)
}

// IdentifierQuery is "identifier=system|value", escaped: a conditional
// write's search (also If-None-Exist).
func IdentifierQuery(ident string) string {
	return url.Values{"identifier": {ident}}.Encode()
}

// Transaction renders a transaction Bundle whose entries are conditional
// updates (PUT Type?identifier=system|value) of the prepared bodies. Every
// entry is safe to repeat, so the Bundle is too: the EHR applies all or
// none, and a second copy finds what the first wrote by identifier.
func Transaction(entries []TxEntry) ([]byte, error) {
	if len(entries) == 0 {
		return nil, errors.New("outbound: a transaction needs at least one entry")
	}
	b := &bcrpb.Bundle{Type: &bcrpb.Bundle_TypeCode{Value: c4pb.BundleTypeCode_TRANSACTION}}
	for _, e := range entries {
		p := e.Prepared
		if p.Resource == nil || p.Identifier == "" {
			return nil, fmt.Errorf("outbound: %s is not prepared", p.Key.Ref())
		}
		en := &bcrpb.Bundle_Entry{
			Resource: p.Resource,
			Request: &bcrpb.Bundle_Entry_Request{
				Method: &bcrpb.Bundle_Entry_Request_MethodCode{Value: c4pb.HTTPVerbCode_PUT},
				Url:    &d4pb.Uri{Value: ConditionalURL(p)},
			},
		}
		if e.FullURL != "" {
			if !strings.HasPrefix(e.FullURL, "urn:uuid:") {
				return nil, fmt.Errorf("outbound: %s: fullUrl is not a urn:uuid", p.Key.Ref())
			}
			en.FullUrl = &d4pb.Uri{Value: e.FullURL}
		}
		b.Entry = append(b.Entry, en)
	}
	return fhirjson.Marshal(b)
}
