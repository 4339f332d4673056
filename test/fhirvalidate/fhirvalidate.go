// Package fhirvalidate runs kapfhir's FHIR output through an independent
// validator: Medplum's StructureDefinition validator in test/validator,
// run with the machine's Node.js. It is test support only.
//
// Require skips the calling test when Node.js or the validator's npm packages
// are missing, unless KAPFHIR_REQUIRE_NODE=1 or CI=true, where it fails it.
package fhirvalidate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kapfhir/kapfhir/test/nodetest"
)

// Dir is the validator's directory (test/validator).
func Dir() string { return nodetest.Dir("validator") }

// Available reports why the validator cannot run, or nil when it can.
func Available() error { return nodetest.Available(Dir(), "@medplum/core") }

// Require skips t when the validator cannot run, or fails it when it is
// mandatory (KAPFHIR_REQUIRE_NODE=1 or CI=true).
func Require(t testing.TB) {
	t.Helper()
	nodetest.Require(t, "the independent FHIR validator", Available())
}

// result is one line of validate.mjs output.
type result struct {
	Index        int      `json:"index"`
	ResourceType string   `json:"resourceType"`
	ID           string   `json:"id"`
	Errors       []string `json:"errors"`
}

// Validate checks every resource (one FHIR JSON document each) and returns an
// error listing each invalid resource and its problems, or nil when all pass.
func Validate(ctx context.Context, resources [][]byte) error {
	if len(resources) == 0 {
		return nil
	}
	var in bytes.Buffer
	for i, r := range resources {
		var compact bytes.Buffer
		if err := json.Compact(&compact, r); err != nil {
			return fmt.Errorf("resource %d is not JSON: %w", i, err)
		}
		in.Write(compact.Bytes())
		in.WriteByte('\n')
	}
	cmd := exec.CommandContext(ctx, "node", filepath.Join(Dir(), "validate.mjs"))
	cmd.Dir = Dir()
	cmd.Stdin = &in
	var out, stderr bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("validator failed: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var problems []string
	seen := 0
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("validator output line %d: %w", seen+1, err)
		}
		seen++
		for _, e := range r.Errors {
			problems = append(problems, fmt.Sprintf("%s/%s (#%d): %s", r.ResourceType, r.ID, r.Index, e))
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading validator output: %w", err)
	}
	if seen != len(resources) {
		return fmt.Errorf("validator answered for %d of %d resources", seen, len(resources))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d problem(s):\n%s", len(problems), strings.Join(problems, "\n"))
	}
	return nil
}
