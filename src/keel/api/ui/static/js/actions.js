// Every change the dashboard can make, in one place, each the same request the CLI makes
// (`keel rollout ...`, see src/keel/cli/rollout.py). Each returns a promise of a message.
import { request, objectPath } from "./api.js";

const MERGE = "application/merge-patch+json";
const JSON_PATCH = "application/json-patch+json";
const HASH_LABEL = "keel.dev/template-hash";

function deploymentPath(dep) {
  return objectPath("deployments", dep.metadata.namespace, dep.metadata.name);
}

export function ownedRevisions(dep, revisions) {
  const uid = dep.metadata.uid;
  return revisions
    .filter((r) => (r.metadata.ownerReferences || []).some((o) => o.uid === uid))
    .sort((a, b) => a.spec.revision - b.spec.revision);
}

export const actions = {
  async scale(dep, replicas) {
    if (!Number.isInteger(replicas) || replicas < 0) throw new Error("replicas: expected a whole number >= 0");
    await request("PATCH", deploymentPath(dep), { spec: { replicas } }, MERGE);
    return `${dep.metadata.name} scaled to ${replicas}`;
  },
  async pause(dep) {
    await request("PATCH", deploymentPath(dep), { spec: { paused: true } }, MERGE);
    return `${dep.metadata.name} paused`;
  },
  async resume(dep) {
    await request("PATCH", deploymentPath(dep), { spec: { paused: false } }, MERGE);
    return `${dep.metadata.name} resumed`;
  },
  // keel rollout undo: write the previous Revision's template back into the Deployment.
  async undo(dep, revisions) {
    const owned = ownedRevisions(dep, revisions);
    const update = (dep.status || {}).updateRevision;
    const older = owned.filter((r) => (r.metadata.labels || {})[HASH_LABEL] !== update);
    if (!older.length) throw new Error(`${dep.metadata.name} has no previous revision to roll back to`);
    const chosen = older[older.length - 1];
    await request("PATCH", deploymentPath(dep),
      [{ op: "replace", path: "/spec/template", value: chosen.spec.template }], JSON_PATCH);
    return `${dep.metadata.name} rolled back to revision ${chosen.spec.revision}`;
  },
  // Canary steps: `keel rollout promote|abort`. Wired to the CLI's requests once they exist;
  // until then the buttons say so instead of guessing at an API.
  async promote(dep) { return rolloutVerb(dep, "promote"); },
  async abort(dep) { return rolloutVerb(dep, "abort"); },
};

async function rolloutVerb(dep, verb) {
  throw new Error(`rollout ${verb} is not available from the dashboard yet (use keel rollout ${verb} deployment/${dep.metadata.name})`);
}
