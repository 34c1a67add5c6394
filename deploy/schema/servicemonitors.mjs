// Validates ServiceMonitors against the Prometheus Operator's schema (the `monitoring.coreos.com/v1`
// CRD, as @kubernetes-models/prometheus-operator compiles it). Reads a JSON array of objects on
// standard input; prints each refusal and exits 1 if there is one.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const objects = JSON.parse(readFileSync(0, "utf8"));
let refused = 0;
for (const { source, object } of objects) {
  try {
    new ServiceMonitor(object).validate();
  } catch (e) {
    refused += 1;
    console.log(`${source}: ServiceMonitor/${object.metadata?.name}: ${e.message}`);
  }
}
console.log(`${objects.length - refused} ServiceMonitors valid, ${refused} refused`);
process.exit(refused === 0 ? 0 : 1);
