// Validates Istio WasmPlugin manifests (JSON files named on the command line) against Istio's
// published CRD schema, as the npm package @kubernetes-models/istio ships it (scripts/setup.sh
// installs it into .node/). Prints one line per file; exits 1 if any is invalid.
const fs = require('fs');
const { WasmPlugin } = require('@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin');

for (const file of process.argv.slice(2)) {
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  try {
    new WasmPlugin(manifest).validate();
    console.log(`valid ${file}`);
  } catch (error) {
    console.log(`invalid ${file}: ${error.message}`);
    process.exitCode = 1;
  }
}
