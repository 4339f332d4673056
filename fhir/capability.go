package fhir

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	cspb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/capability_statement_go_proto"
	vspb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/valuesets_go_proto"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
)

// restDoc documents the search behaviour shared by every resource type.
const restDoc = "Read-only FHIR R4 API. Search: repeated parameters are ANDed, comma-separated values ORed " +
	"(dates take one value each); modifiers are not supported. Date prefixes eq, ne, lt, le, gt, ge; dates " +
	"YYYY, YYYY-MM, YYYY-MM-DD (UTC) or a dateTime with seconds and timezone. Result parameters: " +
	"_count (default 20, at most 1000; 0 returns only the total), _sort (_id, _lastUpdated, date where the " +
	"type has it; prefix - for descending), _summary=count, _include (see searchInclude), _format=json. " +
	"Unknown parameters are rejected with 400 unless the request sends Prefer: handling=lenient. " +
	"Paging follows the next link (an opaque _cursor)."

// capabilityStatement renders the CapabilityStatement of exactly what Server
// implements, generated from resource.Types, resource.Params and
// resource.Includes, with AuditEvent (auditParams) when o.Audit, and how
// clients authenticate (rest.security).
func capabilityStatement(base string, o Options, now time.Time) ([]byte, error) {
	software := o.Software
	cs := &cspb.CapabilityStatement{
		Name:        &d4pb.String{Value: "KapfhirCapabilityStatement"},
		Title:       &d4pb.String{Value: "kapfhir FHIR R4 server"},
		Status:      &cspb.CapabilityStatement_StatusCode{Value: c4pb.PublicationStatusCode_ACTIVE},
		Date:        &d4pb.DateTime{ValueUs: now.UnixMicro(), Timezone: "Z", Precision: d4pb.DateTime_SECOND},
		Kind:        &cspb.CapabilityStatement_KindCode{Value: c4pb.CapabilityStatementKindCode_INSTANCE},
		FhirVersion: &cspb.CapabilityStatement_FhirVersionCode{Value: c4pb.FHIRVersionCode_V_4_0_1},
		Format:      []*cspb.CapabilityStatement_FormatCode{{Value: "json"}},
		Implementation: &cspb.CapabilityStatement_Implementation{
			Description: &d4pb.String{Value: "kapfhir: ketamine treatment programmes as FHIR R4 resources"},
		},
	}
	if base != "" {
		cs.Implementation.Url = &d4pb.Url{Value: base}
	}
	if software != "" {
		name, version, _ := strings.Cut(software, " ")
		cs.Software = &cspb.CapabilityStatement_Software{Name: &d4pb.String{Value: name}}
		if version = strings.TrimSpace(version); version != "" {
			cs.Software.Version = &d4pb.String{Value: version}
		}
	}
	rest := &cspb.CapabilityStatement_Rest{
		Mode:          &cspb.CapabilityStatement_Rest_ModeCode{Value: c4pb.RestfulCapabilityModeCode_SERVER},
		Documentation: &d4pb.Markdown{Value: restDoc},
	}
	for _, typ := range resource.Types {
		r, err := capabilityResource(typ)
		if err != nil {
			return nil, err
		}
		rest.Resource = append(rest.Resource, r)
	}
	if o.Audit {
		r, err := auditCapability()
		if err != nil {
			return nil, err
		}
		rest.Resource = append(rest.Resource, r)
	}
	rest.Security = restSecurity(tokenURL(base, o.TokenURL))
	cs.Rest = []*cspb.CapabilityStatement_Rest{rest}
	b, err := fhirjson.Marshal(cs)
	if err != nil {
		return nil, err
	}
	if err := fhirjson.Validate(b); err != nil {
		return nil, err
	}
	return b, nil
}

var interactions = []vspb.TypeRestfulInteractionValueSet_Value{
	vspb.TypeRestfulInteractionValueSet_READ,
	vspb.TypeRestfulInteractionValueSet_VREAD,
	vspb.TypeRestfulInteractionValueSet_HISTORY_INSTANCE,
	vspb.TypeRestfulInteractionValueSet_SEARCH_TYPE,
}

var paramTypes = map[resource.ParamType]c4pb.SearchParamTypeCode_Value{
	resource.TypeToken:     c4pb.SearchParamTypeCode_TOKEN,
	resource.TypeReference: c4pb.SearchParamTypeCode_REFERENCE,
	resource.TypeDate:      c4pb.SearchParamTypeCode_DATE,
}

func capabilityResource(typ string) (*cspb.CapabilityStatement_Rest_Resource, error) {
	code, ok := c4pb.ResourceTypeCode_Value_value[upperSnake(typ)]
	if !ok {
		return nil, fmt.Errorf("unknown resource type %s", typ)
	}
	r := &cspb.CapabilityStatement_Rest_Resource{
		Type:        &cspb.CapabilityStatement_Rest_Resource_TypeCode{Value: c4pb.ResourceTypeCode_Value(code)},
		Versioning:  &cspb.CapabilityStatement_Rest_Resource_VersioningCode{Value: c4pb.ResourceVersionPolicyCode_VERSIONED},
		ReadHistory: &d4pb.Boolean{Value: true},
	}
	for _, i := range interactions {
		r.Interaction = append(r.Interaction, &cspb.CapabilityStatement_Rest_Resource_ResourceInteraction{
			Code: &cspb.CapabilityStatement_Rest_Resource_ResourceInteraction_CodeType{Value: i},
		})
	}
	for _, inc := range resource.Includes[typ] {
		r.SearchInclude = append(r.SearchInclude, &d4pb.String{Value: inc})
	}
	params := append([]resource.Param{
		{Name: "_id", Type: resource.TypeToken, Doc: "Logical id of this artifact (comma-separated ids are ORed)"},
		{Name: "_lastUpdated", Type: resource.TypeDate, Doc: "When the resource version last changed"},
	}, resource.Params[typ]...)
	for _, p := range params {
		pt, ok := paramTypes[p.Type]
		if !ok {
			return nil, fmt.Errorf("%s: search parameter %s has unsupported type %s", typ, p.Name, p.Type)
		}
		doc := p.Doc
		if p.Type == resource.TypeReference {
			doc += " (id, Type/id or an absolute URL ending in Type/id; refers to " + strings.Join(p.Targets, ", ") + ")"
		}
		r.SearchParam = append(r.SearchParam, &cspb.CapabilityStatement_Rest_Resource_SearchParam{
			Name:          &d4pb.String{Value: p.Name},
			Type:          &cspb.CapabilityStatement_Rest_Resource_SearchParam_TypeCode{Value: pt},
			Documentation: &d4pb.Markdown{Value: doc},
		})
	}
	return r, nil
}

// upperSnake turns a resource type name into its proto enum name: CarePlan -> CARE_PLAN.
func upperSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// SMART on FHIR discovery in the CapabilityStatement.
const (
	// oauthURIs is the SMART extension on rest.security naming the OAuth2
	// endpoints; its "token" sub-extension is the token endpoint.
	oauthURIs = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
	// sysSecurityService is the code system of rest.security.service.
	sysSecurityService = "http://terminology.hl7.org/CodeSystem/restful-security-service"
)

// securityDoc is rest.security.description.
const securityDoc = "Every interaction except GET /metadata requires an access token, sent as " +
	"`Authorization: Bearer <token>`. Tokens come from SMART Backend Services at the token endpoint " +
	"(see the oauth-uris extension): a registered client posts grant_type=client_credentials with a " +
	"client assertion (client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-bearer, " +
	"private_key_jwt) signed RS384 or ES384 and the system scopes it needs. Requests without a valid " +
	"token are refused with 401, requests outside the token's scopes with 403. Discovery: " +
	"GET .well-known/smart-configuration under this FHIR base (or at the server root)."

// tokenURL is the token endpoint to advertise: explicit, else the server
// root (the FHIR base without "/fhir") + "/auth/token", else, when the base
// is derived per request, the absolute-path reference "/auth/token" (SMART
// does not require absolute URIs; it resolves against the host that served
// the statement, which is where a derived base puts the server root).
func tokenURL(base, explicit string) string {
	switch {
	case explicit != "":
		return explicit
	case base != "":
		return strings.TrimSuffix(base, "/fhir") + "/auth/token"
	}
	return "/auth/token"
}

// restSecurity says how clients authenticate: SMART on FHIR (Backend
// Services), the token endpoint in the oauth-uris extension.
func restSecurity(token string) *cspb.CapabilityStatement_Rest_Security {
	return &cspb.CapabilityStatement_Rest_Security{
		Extension: []*d4pb.Extension{{
			Url: &d4pb.Uri{Value: oauthURIs},
			Extension: []*d4pb.Extension{{
				Url:   &d4pb.Uri{Value: "token"},
				Value: &d4pb.Extension_ValueX{Choice: &d4pb.Extension_ValueX_Uri{Uri: &d4pb.Uri{Value: token}}},
			}},
		}},
		Service: []*d4pb.CodeableConcept{{
			Coding: []*d4pb.Coding{{
				System:  &d4pb.Uri{Value: sysSecurityService},
				Code:    &d4pb.Code{Value: "SMART-on-FHIR"},
				Display: &d4pb.String{Value: "SMART-on-FHIR"},
			}},
		}},
		Description: &d4pb.Markdown{Value: securityDoc},
	}
}

// auditDoc documents what is particular to AuditEvent.
const auditDoc = "The audit trail, newest first. AuditEvents are immutable: each has one version " +
	"(ETag W/\"1\"), so vread and history are not supported. Search: _count (default 50, at most 1000), " +
	"_sort (-date, the default, or date), _summary=false; no totals beyond one page, so _summary=count " +
	"is not supported. Paging follows the next link (an opaque _cursor). Unknown parameters are " +
	"rejected with 400 unless the request sends Prefer: handling=lenient."

// auditCapability describes AuditEvent: read and search-type with auditParams.
func auditCapability() (*cspb.CapabilityStatement_Rest_Resource, error) {
	r := &cspb.CapabilityStatement_Rest_Resource{
		Type:          &cspb.CapabilityStatement_Rest_Resource_TypeCode{Value: c4pb.ResourceTypeCode_AUDIT_EVENT},
		Documentation: &d4pb.Markdown{Value: auditDoc},
		Versioning:    &cspb.CapabilityStatement_Rest_Resource_VersioningCode{Value: c4pb.ResourceVersionPolicyCode_NO_VERSION},
		ReadHistory:   &d4pb.Boolean{Value: false},
	}
	for _, i := range []vspb.TypeRestfulInteractionValueSet_Value{vspb.TypeRestfulInteractionValueSet_READ, vspb.TypeRestfulInteractionValueSet_SEARCH_TYPE} {
		r.Interaction = append(r.Interaction, &cspb.CapabilityStatement_Rest_Resource_ResourceInteraction{
			Code: &cspb.CapabilityStatement_Rest_Resource_ResourceInteraction_CodeType{Value: i},
		})
	}
	for _, p := range auditParams {
		pt, ok := paramTypes[p.Type]
		if !ok {
			return nil, fmt.Errorf("AuditEvent: search parameter %s has unsupported type %s", p.Name, p.Type)
		}
		r.SearchParam = append(r.SearchParam, &cspb.CapabilityStatement_Rest_Resource_SearchParam{
			Name:          &d4pb.String{Value: p.Name},
			Type:          &cspb.CapabilityStatement_Rest_Resource_SearchParam_TypeCode{Value: pt},
			Documentation: &d4pb.Markdown{Value: p.Doc},
		})
	}
	return r, nil
}
