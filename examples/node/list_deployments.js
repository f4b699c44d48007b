#!/usr/bin/env node
// Lists Slipway deployments from Node.js: a client generated at run time from the
// .proto files in protos/, to show that any language with gRPC can drive the platform.
//
//   npm install                      # once, at the repository root (package.json)
//   SLIPWAY_CONTROLLER=127.0.0.1:7100 node examples/node/list_deployments.js [MODEL_ID]
//
// Prints one line per deployment (id, name, state), following next_page_token until
// the listing ends. An optional MODEL_ID argument lists only that model's deployments.

"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const address = process.env.SLIPWAY_CONTROLLER || "127.0.0.1:7100";

// google/protobuf/{timestamp,field_mask}.proto come with proto-loader (protobufjs
// bundles the well-known types), so only protos/ is needed on the include path.
const definition = protoLoader.loadSync(path.join(PROTOS, "slipway/v1/deployment_service.proto"), {
  includeDirs: [PROTOS],
  keepCase: true, // field names as in the .proto: deployment_id, next_page_token
  longs: String, // int64 revision
  enums: String, // DEPLOYMENT_STATE_ACTIVE rather than 6
  defaults: true,
  oneofs: true,
});
const slipway = grpc.loadPackageDefinition(definition).slipway.v1;
const client = new slipway.DeploymentService(address, grpc.credentials.createInsecure());

function listPage(request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client.ListDeployments(request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function main() {
  const modelId = process.argv[2] || "";
  let pageToken = "";
  let count = 0;
  do {
    const page = await listPage({ model_id: modelId, page_size: 100, page_token: pageToken });
    for (const d of page.deployments) {
      const state = d.state.replace(/^DEPLOYMENT_STATE_/, "");
      console.log(`${d.id}\t${d.name}\t${state}`);
      count += 1;
    }
    pageToken = page.next_page_token;
  } while (pageToken);
  console.error(`${count} deployment(s) at ${address}`);
}

main()
  .catch((err) => {
    // A refused call carries the gRPC status and the server's message.
    console.error(`Error: ${grpc.status[err.code] || err.code}: ${err.details || err.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
