// Every change the dashboard can make, in one place, each the same request the CLI makes
// (`keel rollout ...`, see src/keel/cli/rollout.py). Each returns a promise of a message.
import { request, objectPath } from "./api.js";

const MERGE = "application/merge-patch+json";
const JSON_PATCH = "application/json-patch+json";
const HASH_LABEL = "keel.dev/template-hash";
const PROMOTE = "keel.dev/promote";
const ABORT = "keel.dev/abort";

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
  // keel rollout promote [--full]: annotate the step (and wave) the rollout stands at, or
  // "full"; the deployment controller moves on. Stale values never act on a later rollout.
  async promote(dep, full = false) {
    const status = dep.status || {};
    const strategy = (dep.spec || {}).strategy || {};
    if (!strategy.canary && !(strategy.waves || []).length) {
      throw new Error(`${dep.metadata.name} has no canary steps or waves to promote`);
    }
    if (!["Progressing", "Paused"].includes(status.phase)) {
      throw new Error(`${dep.metadata.name} has no rollout to promote (phase ${status.phase || "none"})`);
    }
    const at = full ? "full" : `${status.currentStep || 0}.${status.currentWave || 0}`;
    const value = `${status.updateRevision}/${at}`;
    await request("PATCH", deploymentPath(dep), { metadata: { annotations: { [PROMOTE]: value } } }, MERGE);
    return `${dep.metadata.name} ${full ? "fully promoted" : "promoted"}`;
  },
  // keel rollout abort: back to the stable revision; this template is not retried.
  async abort(dep) {
    const status = dep.status || {};
    if (!["Progressing", "Paused", "Failed"].includes(status.phase)) {
      throw new Error(`${dep.metadata.name} has no rollout to abort (phase ${status.phase || "none"})`);
    }
    if (!status.stableRevision || status.stableRevision === status.updateRevision) {
      throw new Error(`${dep.metadata.name} has no stable revision to return to`);
    }
    await request("PATCH", deploymentPath(dep),
      { metadata: { annotations: { [ABORT]: status.updateRevision } } }, MERGE);
    return `${dep.metadata.name} aborted: returning to the stable revision`;
  },
};
