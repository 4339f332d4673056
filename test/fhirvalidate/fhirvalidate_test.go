package fhirvalidate

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	Require(t)
	ok := []byte(`{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1980-02-03"}`)
	if err := Validate(t.Context(), [][]byte{ok}); err != nil {
		t.Fatalf("valid Patient refused: %v", err)
	}
	bad := []byte(`{"resourceType":"CarePlan","id":"c1","status":"active"}`)
	extra := []byte(`{"resourceType":"Patient","id":"p2","nickname":"x"}`)
	err := Validate(t.Context(), [][]byte{ok, bad, extra})
	if err == nil {
		t.Fatal("invalid resources accepted")
	}
	for _, want := range []string{"CarePlan/c1", "CarePlan.intent", "CarePlan.subject", "Patient/p2", "nickname"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "Patient/p1") {
		t.Errorf("valid resource reported: %v", err)
	}
	if err := Validate(t.Context(), [][]byte{[]byte("not json")}); err == nil {
		t.Error("non-JSON input accepted")
	}
}
