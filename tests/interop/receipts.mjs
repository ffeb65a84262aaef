// Sluice interop for moderation receipts (issue 13, point 8): a real Fedify 1.5.9 app
// that looks Sluice's actor up, verifies its receipts, receives its Flags, and sends
// receipts of its own.
//
//   node receipts.mjs --port P --media FILE --contexts ../../relay/contexts.json
//
// Serves two local actors on http://127.0.0.1:P (ids /users/{name}, inboxes
// /users/{name}/inbox): `author` (an RSA key: it posts a picture and receives Sluice's
// Flag) and `moderator` (RSA + Ed25519: it signs and sends receipts). FILE is served
// at /media/picture.jpg. Prints {"ready":true,"port":P}, then reads one JSON command a
// line on stdin ({"id": N, "do": ..., ...}) and answers {"reply": N, ...}:
//
//   lookup  {handle}                 Fedify's lookupWebFinger + lookupObject of
//                                    acct:HANDLE: the JRD and the actor, as Fedify read it
//   verify  {receipt}                Fedify's verifyProof (eddsa-jcs-2022) of a receipt,
//                                    the key fetched by Fedify from its verificationMethod
//   post    {inbox, to}              author sends a Create(Note) with the picture
//   receipt {inbox, to, receipt[, tamper]}  moderator signs `receipt` (Fedify's
//                                    createProof) and sends a Delete carrying it as
//                                    moderationReceipt; tamper: jurisdiction changed after
//   delete  {inbox, to}              moderator sends a plain Delete(Tombstone)
//
// Each Flag that reaches an inbox, after Fedify's verifyRequest (the HTTP signature)
// and Fedify's inbox listener accepted it, is printed as {"flag": id, ...}; a refused
// POST as {"refused": path, "status", "reason"}.
//
// OFFLINE: every document Fedify loads goes through `loader` below: Fedify's own
// preloaded contexts, the FEP's receipt context (https://w3id.org/fep/bc20) from
// Sluice's shipped relay/contexts.json, anything on 127.0.0.1/localhost over http;
// any other host is refused by the fetch wrapper (there is no network here) and
// printed as {"offline": url}; the first use of the shipped context as {"context": url}.
// Fedify's lookupWebFinger always asks https://HOST for an acct: URI; loopback has no
// TLS, so the wrapper sends an https request for a loopback host over http instead.
import http from "node:http";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import {
  Create, DataIntegrityProof, Delete, Document, Flag, Note, Person, Tombstone,
  createFederation, createProof, generateCryptoKeyPair, getAuthenticatedDocumentLoader,
  getDocumentLoader, lookupObject, lookupWebFinger, MemoryKvStore, verifyProof,
  verifyRequest,
} from "@fedify/fedify";

const { values: opt } = parseArgs({ options: {
  port: { type: "string", default: "0" },
  media: { type: "string" },
  contexts: { type: "string", default: "../../relay/contexts.json" },
} });
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

// ---- offline: loopback only, https on loopback sent as http
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);
const realFetch = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  let request = new Request(input, init);
  const url = new URL(request.url);
  if (!LOOPBACK.has(url.hostname)) {
    out({ offline: url.href });
    throw new TypeError(`offline: no network for ${url.href}`);
  }
  if (url.protocol === "https:") {
    url.protocol = "http:";
    out({ plainHttp: request.url, as: url.href });
    request = new Request(url, request);
  }
  return realFetch(request);
};
const RECEIPT_CONTEXT = "https://w3id.org/fep/bc20";
const shipped = JSON.parse(readFileSync(opt.contexts, "utf8"))[RECEIPT_CONTEXT];
if (shipped == null) throw new Error(`${opt.contexts} has no ${RECEIPT_CONTEXT}`);
let contextServed = false;
function offline(base) {
  return async (url) => {
    if (url !== RECEIPT_CONTEXT) return base(url);
    if (!contextServed) out({ context: url }); // once: the shipped copy was needed
    contextServed = true;
    return { contextUrl: null, document: shipped, documentUrl: url };
  };
}
const loader = offline(getDocumentLoader({ allowPrivateAddress: true }));
const loaders = { documentLoader: loader, contextLoader: loader };

// ---- the Fedify app
const rsa = await generateCryptoKeyPair("RSASSA-PKCS1-v1_5");
const ed25519 = await generateCryptoKeyPair("Ed25519");
const keysOf = { author: [rsa], moderator: [rsa, ed25519] };
const federation = createFederation({
  kv: new MemoryKvStore(),
  documentLoaderFactory: () => loader,
  contextLoaderFactory: () => loader,
  authenticatedDocumentLoaderFactory: (identity) =>
    offline(getAuthenticatedDocumentLoader(identity, { allowPrivateAddress: true })),
  // No transformers: the moderator's Delete must reach toJsonLd() as built (see send()).
  activityTransformers: [],
});
federation
  .setActorDispatcher("/users/{identifier}", async (ctx, identifier) => {
    if (!(identifier in keysOf)) return null;
    const keys = await ctx.getActorKeyPairs(identifier);
    return new Person({
      id: ctx.getActorUri(identifier),
      preferredUsername: identifier,
      inbox: ctx.getInboxUri(identifier),
      publicKey: keys[0].cryptographicKey, // #main-key (RSA)
      assertionMethods: keys.map((k) => k.multikey), // the moderator's #key-2 is Ed25519
    });
  })
  .setKeyPairsDispatcher((_ctx, identifier) => keysOf[identifier] ?? []);
federation.setInboxListeners("/users/{identifier}/inbox")
  .on(Flag, async (ctx, flag) => {
    const { json, keyId, path } = ctx.data;
    out({
      flag: flag.id?.href, actor: flag.actorId?.href, objects: flag.objectIds.map((u) => u.href),
      content: flag.content?.toString() ?? null, httpSignatureKey: keyId, path,
      receipt: json.moderationReceipt ?? null,
    });
  });

const server = http.createServer((req, res) => handle(req, res).catch((e) => {
  out({ refused: req.url, status: 500, reason: String(e.stack ?? e) });
  if (!res.headersSent) res.writeHead(500);
  res.end();
}));
async function handle(req, res) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);
  const url = new URL(req.url, `http://${req.headers.host}`);
  const send = async (response) => {
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  };
  if (req.method === "GET" && url.pathname === "/media/picture.jpg") {
    return send(new Response(readFileSync(opt.media), { headers: { "Content-Type": "image/jpeg" } }));
  }
  const request = new Request(url, {
    method: req.method, headers: req.headers,
    body: ["GET", "HEAD"].includes(req.method) ? undefined : body,
  });
  if (req.method !== "POST") return send(await federation.fetch(request, { contextData: {} }));
  // Fedify's inbox accepts an activity on a valid LD signature or proof alone; Sluice's
  // Flag carries neither, but check the HTTP signature explicitly, as upstream.mjs does.
  const refuse = (status, reason) => {
    out({ refused: url.pathname, status, reason });
    return send(new Response(reason + "\n", { status }));
  };
  const key = await verifyRequest(request.clone(), { ...loaders, timeWindow: { hours: 1 } });
  if (key == null) return refuse(401, "HTTP signature invalid (Fedify verifyRequest)");
  const data = { json: JSON.parse(body), keyId: key.id?.href, path: url.pathname };
  const response = await federation.fetch(request, { contextData: data });
  if (!response.ok) return refuse(response.status, "Fedify: " + (await response.clone().text()).trim());
  return send(response);
}
await new Promise((r) => server.listen(Number(opt.port), "127.0.0.1", r));
const port = server.address().port;
const ctx = federation.createContext(new URL(`http://127.0.0.1:${port}`), {});
out({ ready: true, port });

// ---- commands
async function lookup({ handle }) {
  const jrd = await lookupWebFinger(`acct:${handle}`, { allowPrivateAddress: true });
  const actor = await lookupObject(handle, { ...loaders, allowPrivateAddress: true });
  if (actor == null) return { jrd, actor: null };
  const key = await actor.getPublicKey(loaders);
  const methods = [];
  for await (const m of actor.getAssertionMethods(loaders)) {
    methods.push({
      id: m.id?.href, type: m.constructor.name, controller: m.controllerId?.href,
      algorithm: m.publicKey?.algorithm?.name ?? null,
    });
  }
  return {
    jrd,
    actor: {
      id: actor.id?.href, type: actor.constructor.name, preferredUsername: actor.preferredUsername?.toString(),
      inbox: actor.inboxId?.href,
      publicKey: key && { id: key.id?.href, owner: key.ownerId?.href, algorithm: key.publicKey?.algorithm?.name },
      assertionMethods: methods,
    },
  };
}

async function verify({ receipt }) {
  const proof = await DataIntegrityProof.fromJsonLd(
    { "@context": "https://w3id.org/security/data-integrity/v1", ...receipt.proof }, loaders);
  const key = await verifyProof(receipt, proof, loaders);
  return {
    verified: key != null, cryptosuite: proof.cryptosuite,
    key: key?.id?.href ?? null, controller: key?.controllerId?.href ?? null,
    algorithm: key?.publicKey?.algorithm?.name ?? null,
  };
}

// Fedify 1.5.9's createProof() signs a Fedify vocabulary object: it takes
// object.clone({proofs: []}).toJsonLd({format: "compact"}), canonicalizes it with
// RFC 8785 (json-canon) and signs per eddsa-jcs-2022. Its vocabulary has no
// ModerationReceipt, so the receipt is handed over as an object whose compact form is
// the receipt's JSON exactly; the hashing, proof configuration and Ed25519 signature
// are all Fedify's.
async function signReceipt(receipt) {
  const unsigned = { ...receipt };
  delete unsigned.proof;
  const asVocab = { clone: () => asVocab, toJsonLd: async () => unsigned };
  const keyId = (await ctx.getActorKeyPairs("moderator"))[1].keyId;
  const proof = await createProof(asVocab, ed25519.privateKey, keyId, loaders);
  const { "@context": _, ...proofJson } = await proof.toJsonLd({ format: "compact", ...loaders });
  const signed = { ...unsigned, proof: proofJson };
  const selfCheck = await verifyProof(signed, proof, loaders);
  if (selfCheck == null) throw new Error("Fedify does not verify its own receipt proof");
  return signed;
}

async function send(identifier, inbox, to, activity, receipt) {
  const recipient = new Person({ id: new URL(to), inbox: new URL(inbox) }); // no lookup
  if (receipt != null) {
    // Fedify's vocabulary has no moderationReceipt either: the Delete's compact JSON-LD
    // gets it (and the FEP's context that defines it) before Fedify signs the body
    // (RsaSignature2017) and the request (draft-cavage) and POSTs it.
    const compact = activity.toJsonLd.bind(activity);
    activity.toJsonLd = async (options) => {
      const json = await compact(options);
      const context = [json["@context"]].flat();
      return { ...json, "@context": [...context, RECEIPT_CONTEXT], moderationReceipt: receipt };
    };
  }
  const keys = await ctx.getActorKeyPairs(identifier);
  // The RSA key only: an Ed25519 key would have Fedify clone the activity to add its own
  // proof, and a proof of the Delete is not what this shows.
  await ctx.sendActivity([keys[0]], recipient, activity, { immediate: true });
  return { sent: activity.id.href };
}

const activityId = (who) => new URL(`/users/${who}/activities/${crypto.randomUUID()}`, ctx.getActorUri(who));
const commands = {
  lookup,
  verify,
  post: ({ inbox, to }) => {
    const me = ctx.getActorUri("author");
    const note = new Note({
      id: new URL(`/users/author/notes/${crypto.randomUUID()}`, me), attribution: me, to: new URL(to),
      content: "A picture from a Fedify server",
      attachments: [new Document({ mediaType: "image/jpeg", url: new URL(`/media/picture.jpg`, me) })],
    });
    return send("author", inbox, to, new Create({ id: activityId("author"), actor: me, to: new URL(to), object: note }))
      .then((r) => ({ ...r, note: note.id.href }));
  },
  receipt: async ({ inbox, to, receipt, tamper }) => {
    const signed = await signReceipt(receipt);
    if (tamper) signed.jurisdiction = ["DE"]; // changed after signing: a forgery
    const me = ctx.getActorUri("moderator");
    const activity = new Delete({
      id: activityId("moderator"), actor: me, to: new URL(to),
      object: new Tombstone({ id: new URL(signed.object[0]) }),
    });
    return { ...(await send("moderator", inbox, to, activity, signed)), receipt: signed };
  },
  delete: ({ inbox, to }) => {
    const me = ctx.getActorUri("moderator");
    const activity = new Delete({
      id: activityId("moderator"), actor: me, to: new URL(to),
      object: new Tombstone({ id: new URL(`/users/moderator/notes/${crypto.randomUUID()}`, me) }),
    });
    return send("moderator", inbox, to, activity, null);
  },
};
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { id, do: what, ...args } = JSON.parse(line);
  try {
    out({ reply: id, ...(await commands[what](args)) });
  } catch (e) {
    out({ reply: id, error: String(e.message ?? e).split("\n")[0] });
  }
}
