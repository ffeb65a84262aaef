// Sluice interop INSTANCE: a real Fedify 1.5.9 app with inboxes
// (/users/{identifier}/inbox and the shared /inbox) that verifies signatures.
//
//   node upstream.mjs --port P
//
// Prints {"ready":true,"port":P}, then one JSON line per accepted activity
// ({"accepted": id, "type", "verified": true, "scheme", ...}) and per refused
// request ({"refused": id|path, "status", "reason"}).
//
// The request URL is rebuilt from the Host header (and X-Forwarded-Proto,
// default http): signatures cover the host the sender addressed, not
// 127.0.0.1:P.
//
// How each scheme is verified, BEFORE the request reaches Fedify's inbox:
//  * draft-cavage (Signature: keyId=...): Fedify's own sig.verifyRequest(),
//    the function its inbox uses.  We call it explicitly because Fedify's
//    inbox accepts an activity on a valid Linked Data signature or FEP-8b32
//    proof alone and then never looks at the HTTP signature; Fedify's own
//    deliveries always carry an LD signature, so without this pre-check a
//    broken HTTP signature would go unnoticed.  The request then goes to a
//    normal Fedify inbox, which verifies again (LD sig / proof / HTTP sig).
//  * RFC 9421 (Signature-Input): Fedify 1.5.9 cannot verify it (verifyRequest
//    parses only the cavage Signature header) and Misskey's library 0.0.10 has
//    no RFC 9421 verifier (parseRequestSignature throws "Not implemented"), so
//    the signature is verified with the independent `http-message-signatures`
//    package, the Content-Digest with Misskey's verifyRFC9530DigestHeader, the
//    key is fetched with Fedify's fetchKey, and the request is then handed to a
//    Fedify inbox with skipSignatureVerification.
// Both: the key's owner must be the activity's actor.
import http from "node:http";
import { KeyObject } from "node:crypto";
import { parseArgs } from "node:util";
import {
  Activity, CryptographicKey, Person, createFederation, fetchKey,
  generateCryptoKeyPair, MemoryKvStore, verifyRequest,
} from "@fedify/fedify";
import { verifyRFC9530DigestHeader } from "@misskey-dev/node-http-message-signatures";
import { createVerifier, httpbis } from "http-message-signatures";

const { values: opt } = parseArgs({ options: { port: { type: "string", default: "0" } } });
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const kv = new MemoryKvStore();
// Local actors need a key: for a personal inbox Fedify fetches the sender's
// key with a GET signed by the recipient's key ("authorized fetch").  One RSA
// key is shared by all local actors (each gets its own keyId).
const localKeys = [await generateCryptoKeyPair("RSASSA-PKCS1-v1_5")];

function makeFederation(skipSignatureVerification) {
  const f = createFederation({ kv, allowPrivateAddress: true, skipSignatureVerification });
  f.setActorDispatcher("/users/{identifier}", async (ctx, identifier) => new Person({
    id: ctx.getActorUri(identifier),
    preferredUsername: identifier,
    inbox: ctx.getInboxUri(identifier),
    publicKey: (await ctx.getActorKeyPairs(identifier))[0].cryptographicKey,
  })).setKeyPairsDispatcher(() => localKeys);
  f.setInboxListeners("/users/{identifier}/inbox", "/inbox")
    .on(Activity, (ctx, activity) => { // Create, Follow, Like, Update, Delete, ...
      ctx.data.fired = true;
      const { json, scheme, keyId, path } = ctx.data;
      out({
        accepted: activity.id?.href, type: activity.constructor.name, verified: true,
        scheme, keyId, path, ldSignature: json.signature != null, proof: json.proof != null,
      });
    });
  return f;
}
const strict = makeFederation(false); // Fedify verifies (cavage / LD sig / proof)
const preverified = makeFederation(true); // RFC 9421, verified above Fedify

const keyAlg = { "RSASSA-PKCS1-v1_5": "rsa-v1_5-sha256", Ed25519: "ed25519" };
async function verifyRfc9421(req, body, url, loaders) {
  if (!await verifyRFC9530DigestHeader(req, body, { failOnNoDigest: true, verifyAll: true })) {
    throw new Error("Content-Digest missing or does not match the body");
  }
  const input = req.headers["signature-input"];
  if (!input.includes('"@target-uri"') && !(input.includes('"@authority"') && input.includes('"@path"'))) {
    throw new Error("signature covers neither @target-uri nor @authority+@path");
  }
  let key = null;
  const ok = await httpbis.verifyMessage({
    requiredFields: ["@method", "content-digest"],
    requiredParams: ["keyid", "created"],
    maxAge: 3600, tolerance: 60,
    keyLookup: async ({ keyid }) => {
      ({ key } = await fetchKey(new URL(keyid), CryptographicKey, loaders));
      if (key?.publicKey == null) return null;
      const alg = keyAlg[key.publicKey.algorithm.name];
      return { id: keyid, algs: [alg], verify: createVerifier(KeyObject.from(key.publicKey), alg) };
    },
  }, { method: req.method, url: url.href, headers: req.headers });
  if (!ok) throw new Error(key == null ? "key not found" : "RFC 9421 signature invalid");
  return key;
}

const server = http.createServer((req, res) => handle(req, res).catch((e) => {
  out({ refused: req.url, status: 500, reason: String(e.stack ?? e) });
  if (!res.headersSent) res.writeHead(500);
  res.end();
}));
async function handle(req, res) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);
  const proto = req.headers["x-forwarded-proto"] ?? "http";
  const url = new URL(req.url, `${proto}://${req.headers.host}`);
  const request = new Request(url, {
    method: req.method, headers: req.headers,
    body: ["GET", "HEAD"].includes(req.method) ? undefined : body,
  });
  const send = async (response) => {
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  };
  if (req.method !== "POST") return send(await strict.fetch(request, { contextData: {} }));

  let json = {};
  try { json = JSON.parse(body); } catch { /* Fedify answers 400 below */ }
  const id = typeof json.id === "string" ? json.id : url.pathname;
  const scheme = req.headers["signature-input"] ? "rfc9421"
    : req.headers.signature ? "cavage" : null;
  const refuse = (status, reason) => {
    out({ refused: id, status, reason, scheme, path: url.pathname });
    return send(new Response(reason + "\n", { status }));
  };
  const ctx = strict.createContext(request, {});
  const loaders = { documentLoader: ctx.documentLoader, contextLoader: ctx.contextLoader };
  let key;
  try {
    if (scheme === "rfc9421") key = await verifyRfc9421(req, body, url, loaders);
    else if (scheme === "cavage") {
      key = await verifyRequest(request, { ...loaders, timeWindow: { hours: 1 } });
      if (key == null) throw new Error("cavage signature invalid (Fedify verifyRequest)");
    } else return refuse(401, "unsigned request");
  } catch (e) {
    return refuse(401, String(e.message ?? e));
  }
  const actor = typeof json.actor === "string" ? json.actor : json.actor?.id;
  if (key.ownerId?.href !== actor) {
    return refuse(401, `key owner ${key.ownerId?.href} is not the actor ${actor}`);
  }
  const data = { json, scheme, keyId: key.id?.href, path: url.pathname, fired: false };
  const federation = scheme === "rfc9421" ? preverified : strict;
  const response = await federation.fetch(request, { contextData: data });
  if (!response.ok) return refuse(response.status, "Fedify: " + (await response.clone().text()).trim());
  if (!data.fired) out({ duplicate: id, status: response.status, scheme, path: url.pathname });
  return send(response);
}
server.listen(Number(opt.port), "127.0.0.1", () => out({ ready: true, port: server.address().port }));
