// Sluice interop SENDER: a real Fedify 1.5.9 app with one actor (alice).
//
//   node peer.mjs --port P --inbox URL --count N --scheme cavage|rfc9421|both
//                 [--host-header H] [--tamper body|content-type] [--ed25519]
//                 [--wait-stdin]
//                 [--components @method,@target-uri,content-digest,content-type]
//
// Serves alice's actor document (with her keys) on 127.0.0.1:P, prints
// {"ready":true,"port":P}, then sends N activities per scheme to --inbox and
// prints one JSON line per activity.  Keeps serving until killed.
//   cavage:  Fedify's own delivery (ctx.sendActivity), i.e. Fedify signs.
//   rfc9421: body made by Fedify, request signed per RFC 9421 with the
//            signature base built by @misskey-dev/node-http-message-signatures.
//   --host-header H: sign for (and send Host:) H while connecting to --inbox.
//   --tamper body: flip one byte of the body after signing (negative test);
//   --tamper content-type: change the (signed) Content-Type after signing.
import http from "node:http";
import { parseArgs } from "node:util";
import {
  Create, Delete, Follow, Like, Note, Person, Tombstone, Update,
  createFederation, generateCryptoKeyPair, MemoryKvStore,
} from "@fedify/fedify";
import {
  RFC9421SignatureBaseFactory, convertSignatureParamsDictionary,
  encodeArrayBufferToBase64, genDigestHeaderBothRFC3230AndRFC9530,
} from "@misskey-dev/node-http-message-signatures";

const { values: opt } = parseArgs({ options: {
  port: { type: "string", default: "0" },
  inbox: { type: "string" },
  count: { type: "string", default: "5" },
  scheme: { type: "string", default: "cavage" },
  "host-header": { type: "string" },
  components: { type: "string", default: "@method,@target-uri,content-digest,content-type" },
  tamper: { type: "string" },
  ed25519: { type: "boolean", default: false },
  "wait-stdin": { type: "boolean", default: false },
} });
if (!opt.inbox) throw new Error("--inbox URL is required");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

// The URL the sender *addresses* (what gets signed) vs. where it connects.
const connectUrl = new URL(opt.inbox);
const signedInbox = opt["host-header"]
  ? new URL(connectUrl.pathname + connectUrl.search, `${connectUrl.protocol}//${opt["host-header"]}`)
  : new URL(opt.inbox);

// ---- keys: RSA (HTTP signatures + LD signatures), optional Ed25519 (FEP-8b32 proofs)
const keyPairs = [await generateCryptoKeyPair("RSASSA-PKCS1-v1_5")];
if (opt.ed25519) keyPairs.push(await generateCryptoKeyPair("Ed25519"));

// ---- the Fedify app
const federation = createFederation({
  kv: new MemoryKvStore(),
  allowPrivateAddress: true, // everything lives on 127.0.0.1
  // no queue: sendActivity() delivers immediately and throws on non-2xx
});
federation
  .setActorDispatcher("/users/{identifier}", async (ctx, identifier) => {
    if (identifier !== "alice") return null;
    const keys = await ctx.getActorKeyPairs(identifier);
    return new Person({
      id: ctx.getActorUri(identifier),
      preferredUsername: identifier,
      name: "Alice (Sluice interop peer)",
      inbox: ctx.getInboxUri(identifier),
      publicKey: keys[0].cryptographicKey, // #main-key (RSA)
      assertionMethods: keys.map((k) => k.multikey),
    });
  })
  .setKeyPairsDispatcher(() => keyPairs);
federation.setInboxListeners("/users/{identifier}/inbox"); // the peer receives nothing

// ---- outgoing POSTs: record the status; honour --host-header and --tamper
const realFetch = globalThis.fetch;
let lastStatus = null;
function tamperBody(body) {
  const i = body.lastIndexOf('"'); // flip a byte inside the last string value
  const b = Buffer.from(body);
  b[i - 1] = b[i - 1] === 0x30 ? 0x31 : 0x30;
  return b.toString();
}
async function post(url, headers, body) {
  if (opt.tamper === "body") body = tamperBody(body);
  if (opt.tamper === "content-type") {
    headers.set("Content-Type", 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"');
  }
  if (opt["host-header"] == null) return realFetch(url, { method: "POST", headers, body });
  // fetch() silently drops a Host header, so use node:http here.
  const res = await new Promise((resolve, reject) => {
    const req = http.request(connectUrl, {
      method: "POST", headers: Object.fromEntries(headers), setHost: false,
    }, resolve);
    req.on("error", reject);
    req.end(body);
  });
  let text = "";
  for await (const chunk of res) text += chunk;
  const nullBody = [101, 204, 205, 304].includes(res.statusCode);
  return new Response(nullBody ? null : text, { status: res.statusCode });
}
globalThis.fetch = async (input, init) => {
  const req = new Request(input, init);
  if (req.method !== "POST") return realFetch(req);
  const res = await post(connectUrl, req.headers, await req.text());
  lastStatus = res.status;
  return res;
};

// ---- RFC 9421 signing (Misskey's signature-base factory + WebCrypto)
async function signRfc9421(keyPair, keyId, bodyText) {
  const request = {
    url: signedInbox.href, method: "POST",
    headers: {
      Host: signedInbox.host,
      Date: new Date().toUTCString(),
      "Content-Type": "application/activity+json",
    },
  };
  await genDigestHeaderBothRFC3230AndRFC9530(request, bodyText, "SHA-256"); // Digest + Content-Digest
  const components = opt.components.split(",").map((c) => [c.trim(), {}]);
  request.headers["Signature-Input"] = convertSignatureParamsDictionary({
    sig1: [components, { keyid: keyId, created: Math.floor(Date.now() / 1000) }],
  });
  const base = new RFC9421SignatureBaseFactory(request).generate("sig1");
  const sig = await crypto.subtle.sign("RSASSA-PKCS1-v1_5", keyPair.privateKey,
    new TextEncoder().encode(base));
  request.headers.Signature = `sig1=:${encodeArrayBufferToBase64(sig)}:`;
  return request.headers;
}

// ---- start serving, then send
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://${req.headers.host ?? `127.0.0.1:${port}`}`);
  const response = await federation.fetch(
    new Request(url, { method: req.method, headers: req.headers }),
    { contextData: undefined },
  );
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
  // who fetched what (key fetches by verifiers): useful when debugging
  out({ served: req.url, method: req.method, status: response.status, host: req.headers.host,
    accept: req.headers.accept, signed: req.headers.signature != null, ua: req.headers["user-agent"] });
});
await new Promise((r) => server.listen(Number(opt.port), "127.0.0.1", r));
const port = server.address().port;
out({ ready: true, port });
if (opt["wait-stdin"]) {
  await new Promise((r) => process.stdin.once("data", r));
}

const ctx = federation.createContext(new URL(`http://127.0.0.1:${port}`), undefined);
const me = ctx.getActorUri("alice");
const recipientId = new URL(signedInbox.pathname.replace(/\/inbox$/, "") || "/", signedInbox);
if (recipientId.pathname === "/") recipientId.pathname = "/users/bob";
const recipient = new Person({ id: recipientId, inbox: signedInbox }); // explicit inbox: no lookup

const types = ["Create", "Follow", "Like", "Update", "Delete"];
let lastNote = null;
function makeActivity(i, tag) {
  const id = new URL(`/users/alice/activities/${tag}-${i}-${crypto.randomUUID()}`, me);
  const note = () => new Note({
    id: lastNote ?? (lastNote = new URL(`/users/alice/notes/${crypto.randomUUID()}`, me)),
    attribution: me, to: recipientId,
    content: `Hello from Fedify, message ${i} (${tag})`,
  });
  switch (types[i % types.length]) {
    case "Create": lastNote = null; return new Create({ id, actor: me, to: recipientId, object: note() });
    case "Follow": return new Follow({ id, actor: me, object: recipientId });
    case "Like": note(); return new Like({ id, actor: me, object: lastNote });
    case "Update": return new Update({ id, actor: me, to: recipientId, object: note() });
    case "Delete": note(); return new Delete({ id, actor: me, to: recipientId, object: new Tombstone({ id: lastNote }) });
  }
}

const schemes = opt.scheme === "both" ? ["cavage", "rfc9421"] : [opt.scheme];
for (const scheme of schemes) {
  for (let i = 0; i < Number(opt.count); i++) {
    const activity = makeActivity(i, scheme);
    const line = { id: activity.id.href, type: types[i % types.length], scheme };
    const t0 = performance.now();
    lastStatus = null;
    try {
      if (scheme === "cavage") {
        await ctx.sendActivity({ identifier: "alice" }, recipient, activity, { immediate: true });
      } else {
        const keys = await ctx.getActorKeyPairs("alice");
        const body = JSON.stringify(await activity.toJsonLd({ contextLoader: ctx.contextLoader }));
        const headers = await signRfc9421(keys[0], keys[0].keyId.href, body);
        await globalThis.fetch(signedInbox, { method: "POST", headers, body });
      }
    } catch (e) {
      line.error = String(e.message ?? e).split("\n")[0];
    }
    line.status = lastStatus;
    line.ms = Math.round(performance.now() - t0);
    out(line);
  }
}
out({ done: true });
