package catalogue

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/treatment"
)

// FuzzDecodeProtocol feeds arbitrary bytes to the protocol file decoder, the
// loader's step for one file. A file is either refused with at least one
// problem, or decoded into a protocol whose problems are exactly those
// treatment.ValidateProtocol finds, and that clones into an equal value.
// followOn checks against the shipped catalogue run on
// it too. Nothing panics.
func FuzzDecodeProtocol(f *testing.F) {
	shipped, err := fs.Glob(builtin, "protocols/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range shipped {
		b, err := builtin.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, dir := range []string{"testdata/bad", "testdata/override"} {
		files, err := filepath.Glob(filepath.Join(dir, "*"))
		if err != nil {
			f.Fatal(err)
		}
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	c, err := Load("")
	if err != nil {
		f.Fatalf("Load: %v", err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ps treatment.Problems
		e, ok := decode(&ps, "f.yaml", b)
		if !ok {
			if len(ps) == 0 {
				t.Fatalf("decode(%q) refused the file without a problem", b)
			}
			return
		}
		var want treatment.Problems
		for _, fe := range treatment.ValidateProtocol(e.p) {
			want.Add("f.yaml: "+fe.Field, fe.Reason)
		}
		if diff := cmp.Diff(want, ps); diff != "" {
			t.Fatalf("decode(%q) problems differ from validation (-want +got):\n%s", b, diff)
		}
		cp := clone(e.p)
		if diff := cmp.Diff(e.p, cp); diff != "" {
			t.Fatalf("clone differs (-orig +clone):\n%s", diff)
		}
		c.checkFollowOn(&ps, e.file, "followOn", e.p.FollowOn)
		for _, v := range e.p.Variants {
			c.checkFollowOn(&ps, e.file, "variants.followOn", v.FollowOn)
		}
	})
}
