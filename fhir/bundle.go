package fhir

import (
	"bytes"
	"fmt"
	"time"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
)

// entry is a Bundle entry: its shell (fullUrl, search, request, response)
// rendered by fhirjson, and the stored resource bytes spliced into it.
type entry struct {
	shell    *bcrpb.Bundle_Entry // Resource must be nil
	resource []byte              // stored JSON; nil for none (a deletion in a history)
}

// renderBundle renders b (whose Entry must be empty) with fhirjson and splices
// the entries into it. The stored resources are never re-marshalled: each
// entry shell is rendered without its resource, its closing brace is replaced
// by `,"resource":` + the stored bytes + `}`, and the entries become the
// shell's "entry" array.
func renderBundle(b *bcrpb.Bundle, entries []entry) ([]byte, error) {
	if len(b.GetEntry()) > 0 {
		return nil, fmt.Errorf("render bundle: the shell has entries")
	}
	shell, err := fhirjson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("render bundle: %w", err)
	}
	if len(entries) == 0 {
		return shell, nil
	}
	if len(shell) < 2 || shell[0] != '{' || shell[len(shell)-1] != '}' {
		return nil, fmt.Errorf("render bundle: the shell is not a JSON object")
	}
	size := len(shell) + 16
	for _, e := range entries {
		size += len(e.resource) + 256
	}
	var buf bytes.Buffer
	buf.Grow(size)
	buf.WriteString(`{"entry":[`)
	for i, e := range entries {
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := writeEntry(&buf, e); err != nil {
			return nil, fmt.Errorf("render bundle: entry %d: %w", i, err)
		}
	}
	buf.WriteString(`],`)
	buf.Write(shell[1:])
	return buf.Bytes(), nil
}

// writeEntry writes one entry shell with the stored resource spliced in.
func writeEntry(buf *bytes.Buffer, e entry) error {
	if e.shell.GetResource() != nil {
		return fmt.Errorf("the entry shell has a resource")
	}
	es, err := fhirjson.MarshalElement(e.shell)
	if err != nil {
		return err
	}
	if len(es) < 2 || es[0] != '{' || es[len(es)-1] != '}' {
		return fmt.Errorf("the entry shell is not a JSON object")
	}
	res := bytes.TrimSpace(e.resource)
	if len(res) == 0 {
		buf.Write(es)
		return nil
	}
	if res[0] != '{' || res[len(res)-1] != '}' {
		return fmt.Errorf("the stored resource is not a JSON object")
	}
	buf.Write(es[:len(es)-1])
	if len(es) > 2 {
		buf.WriteByte(',')
	}
	buf.WriteString(`"resource":`)
	buf.Write(res)
	buf.WriteByte('}')
	return nil
}

// bundleShell returns a Bundle of type t with timestamps set to now.
func bundleShell(t c4pb.BundleTypeCode_Value, now time.Time) *bcrpb.Bundle {
	return &bcrpb.Bundle{
		Meta:      &d4pb.Meta{LastUpdated: instant(now)},
		Type:      &bcrpb.Bundle_TypeCode{Value: t},
		Timestamp: instant(now),
	}
}

func link(rel, url string) *bcrpb.Bundle_Link {
	return &bcrpb.Bundle_Link{Relation: &d4pb.String{Value: rel}, Url: &d4pb.Uri{Value: url}}
}

func fullURL(base string, v resource.Version) *d4pb.Uri {
	return &d4pb.Uri{Value: base + "/" + v.Type + "/" + v.ID}
}

// instant converts t to a FHIR instant in UTC with microsecond precision.
func instant(t time.Time) *d4pb.Instant {
	return &d4pb.Instant{ValueUs: t.UnixMicro(), Timezone: "Z", Precision: d4pb.Instant_MICROSECOND}
}

// historyBundle renders the instance history vs (newest first) as a Bundle of
// type history.
func historyBundle(base, typ, id string, vs []resource.Version, now time.Time) ([]byte, error) {
	b := bundleShell(c4pb.BundleTypeCode_HISTORY, now)
	b.Total = &d4pb.UnsignedInt{Value: uint32(len(vs))}
	b.Link = []*bcrpb.Bundle_Link{link("self", base+"/"+typ+"/"+id+"/_history")}
	entries := make([]entry, 0, len(vs))
	for _, v := range vs {
		method, url, status := c4pb.HTTPVerbCode_PUT, v.Type+"/"+v.ID, "200 OK"
		switch {
		case v.Deleted:
			method, status = c4pb.HTTPVerbCode_DELETE, "204 No Content"
		case v.VersionID == 1:
			method, url, status = c4pb.HTTPVerbCode_POST, v.Type, "201 Created"
		}
		e := entry{shell: &bcrpb.Bundle_Entry{
			FullUrl: fullURL(base, v),
			Request: &bcrpb.Bundle_Entry_Request{
				Method: &bcrpb.Bundle_Entry_Request_MethodCode{Value: method},
				Url:    &d4pb.Uri{Value: url},
			},
			Response: &bcrpb.Bundle_Entry_Response{
				Status:       &d4pb.String{Value: status},
				Etag:         &d4pb.String{Value: etag(v.VersionID)},
				LastModified: instant(v.LastUpdated),
			},
		}}
		if !v.Deleted {
			e.resource = v.JSON
		}
		entries = append(entries, e)
	}
	return renderBundle(b, entries)
}

// searchBundle renders a page of matches and the included resources as a
// Bundle of type searchset. next is "" on the last page.
func searchBundle(base string, total int, matches, included []resource.Version, self, next string, now time.Time) ([]byte, error) {
	b := bundleShell(c4pb.BundleTypeCode_SEARCHSET, now)
	b.Total = &d4pb.UnsignedInt{Value: uint32(total)}
	b.Link = []*bcrpb.Bundle_Link{link("self", self)}
	if next != "" {
		b.Link = append(b.Link, link("next", next))
	}
	entries := make([]entry, 0, len(matches)+len(included))
	add := func(vs []resource.Version, mode c4pb.SearchEntryModeCode_Value) {
		for _, v := range vs {
			entries = append(entries, entry{
				shell: &bcrpb.Bundle_Entry{
					FullUrl: fullURL(base, v),
					Search:  &bcrpb.Bundle_Entry_Search{Mode: &bcrpb.Bundle_Entry_Search_ModeCode{Value: mode}},
				},
				resource: v.JSON,
			})
		}
	}
	add(matches, c4pb.SearchEntryModeCode_MATCH)
	add(included, c4pb.SearchEntryModeCode_INCLUDE)
	return renderBundle(b, entries)
}
