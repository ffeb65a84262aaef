"""Assemble one Sluice process: storage, sessions, workers and the doors."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import structlog
import yarl
from aiohttp import web

from relay.activity import Activity
from relay.actor import Actor
from relay.actor.routes import actor_routes
from relay.banks import BankStore, BankWatcher
from relay.banks.sync import bank_syncs
from relay.checkers.configured import checkers
from relay.config import Config
from relay.deliver import HttpUpstream, Upstream
from relay.doors import Handler
from relay.doors.admin import AdminDoor
from relay.doors.inbound import InboundDoor
from relay.doors.passthrough import Passthrough
from relay.doors.receipt import ReceiptDoor
from relay.doors.upload import UploadDoor
from relay.effects import IRREVERSIBLE
from relay.effects.act import Ban, Purge, Remove, Report
from relay.effects.act import planner as act_planner
from relay.effects.follow import KIND as FOLLOW
from relay.effects.follow import Follow, follows
from relay.effects.honour import KIND as HONOUR
from relay.effects.honour import Honour, carried_receipt, consider
from relay.effects.notify import KIND as NOTIFY
from relay.effects.notify import Notify, planner
from relay.effects.receipt import KIND as RECEIPT
from relay.effects.receipt import Receipts, ReceiptSettings
from relay.effects.receipt import planner as receipt_planner
from relay.effects.retention import Retention
from relay.effects.send import KIND as SEND
from relay.effects.send import Send
from relay.evidence import EvidenceStore
from relay.flow import Flow
from relay.hold import Check, Hold
from relay.hosts import LocalHosts
from relay.instance import InstanceApi
from relay.instance_actions import SUPPORTED as ACTS_ON
from relay.instance_actions import for_software
from relay.media.actors import FreshActors
from relay.media.check import MediaCheck
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.hasher import MediaHasher
from relay.media.video import VideoLimits
from relay.metrics import Metrics
from relay.network import (
    DEFAULT_USER_AGENT,
    JsonDocument,
    NetworkPolicy,
    client_session,
    fetch_json_document,
)
from relay.outbound.proxy import ForwardProxy
from relay.outbox import Outbox
from relay.policy import Policy
from relay.resend import Resend
from relay.review.decide import Decisions
from relay.review.session import session_key
from relay.signature import KeyCache, Verified
from relay.signature.objects import ObjectVerifier
from relay.store import connect
from relay.store.activities import ActivityStore
from relay.store.receipts import ReceiptStore
from relay.store.uploads import UploadRecords
from relay.trust import TrustRule

__all__ = ["SLUICE", "Sluice", "build_app"]

log = structlog.get_logger(__name__)


@dataclass
class Sluice:
    """The running parts of one process, for handlers, CLI helpers and tests."""

    config: Config
    pool: asyncpg.Pool
    store: ActivityStore
    flow: Flow
    metrics: Metrics
    inbound: InboundDoor
    passthrough: Passthrough
    banks: BankWatcher
    admin_url: str | None = None  # the admin listener, once it listens
    outbox: Outbox | None = None  # effects of verdicts (notify…), run at least once
    upload: UploadDoor | None = None  # local uploads: pict-rs's hook, the upload APIs
    outbound: ForwardProxy | None = None  # the instance's forward proxy, when [outbound] listen
    outbound_url: str | None = None  # its address, once it listens
    receipts: ReceiptStore | None = None  # receipts issued, followers, peers' receipts
    decisions: Decisions | None = None  # moderators' confirm, false positive, escalate


SLUICE = web.AppKey("sluice", Sluice)


def build_app(
    config: Config, *, checks: tuple[Check, ...] = (), upstream: Upstream | None = None
) -> web.Application:
    """The aiohttp application; resources open and close in ``cleanup_ctx``.

    ``checks`` run in the hold beside the media check (tests add their own).
    """

    # Bodies as sent: signatures cover the bytes on the wire, the door refuses a
    # Content-Encoding (415) and the passthrough forwards it untouched.
    @web.middleware
    async def uploads(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The upload door's APIs under every spelling, before a route is chosen.
        door = app[SLUICE].upload
        if door is None:
            return await handler(request)
        return await door.middleware(request, handler)

    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        handler_args={"auto_decompress": False},
        middlewares=[uploads],
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Each part is registered for closing as soon as it is open: a failure at any
        # step (an unreadable evidence key, a taken admin port) closes everything opened
        # before it, in reverse order, as the end of the process does.
        async with contextlib.AsyncExitStack() as opened:
            metrics = Metrics()
            database = await connect(
                config.database.url, config.storage.data_dir, pool_size=config.database.pool_size
            )
            opened.push_async_callback(database.close)
            pool = database.pool
            policy = NetworkPolicy.from_strings(config.network.allow, config.network.allow_http)
            # Sluice's own actor, when [actor] base_url: it signs fetches, Flags, receipts.
            actor = Actor.configured(config)
            signer = actor.fetch_signer() if actor is not None else None

            def fediverse_session(limit_per_host: int = 4) -> aiohttp.ClientSession:
                """A session of its own, closed on the way out: senders name the URLs
                fetched, so keys, media and objects must not hold each other's connections."""
                made = client_session(
                    policy,
                    connect_timeout=config.network.connect_timeout_seconds,
                    read_timeout=config.network.read_timeout_seconds,
                    limit_per_host=limit_per_host,
                )
                opened.push_async_callback(made.close)
                return made

            # KeyCache bounds key fetches further (time, per host, per client).
            session = fediverse_session()
            fresh_actors = FreshActors()

            async def fetch_key_document(url: str) -> JsonDocument:
                fetched = await fetch_json_document(
                    session, policy, url, max_redirects=config.network.max_redirects, signer=signer
                )
                if fetched.at_its_id:  # only a document at its own id speaks for that actor
                    fresh_actors.remember(fetched.document)  # a new actor: pictures checked too
                return fetched

            keys = KeyCache(
                fetch_key_document,
                ttl=config.signatures.key_cache_seconds,
                failure_ttl=config.signatures.key_failure_cache_seconds,
                refresh_interval=config.signatures.key_refresh_interval_seconds,
                timeout=config.signatures.key_fetch_timeout_seconds,
                per_host=config.signatures.key_fetch_per_host,
                per_client=config.signatures.key_fetch_per_client,
            )
            media_session = fediverse_session(limit_per_host=config.media.per_host_concurrency)
            object_session = fediverse_session(limit_per_host=config.media.per_host_concurrency)
            banks = BankWatcher(pool, config.bank)
            await opened.enter_async_context(banks)  # started; stopped on the way out
            hasher = MediaHasher(
                max_pixels=config.media.max_pixels,
                max_pixels_per_byte=config.media.max_pixels_per_byte,
                dense_above=config.media.dense_above,
                workers=config.media.hash_workers or None,
                memory=config.media.hash_memory_bytes,
                sender_pixels_per_minute=config.media.sender_pixels_per_minute,
                video=VideoLimits.lasting(
                    config.media.video_max_seconds, config.media.video_time_budget_seconds
                ),
            )
            opened.callback(hasher.close)
            checker_session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                headers={"User-Agent": DEFAULT_USER_AGENT},
            )
            opened.push_async_callback(checker_session.close)
            media = MediaCheck(
                MediaFetcher(
                    media_session,
                    policy,
                    max_bytes=config.media.max_bytes,
                    timeout=config.media.fetch_timeout_seconds,
                    max_redirects=config.network.max_redirects,
                    signer=signer,
                ),
                lambda: banks.index,
                HashCache(config.media.cache_seconds),
                max_refs=config.media.max_refs,
                hasher=hasher,
                fresh_actors=fresh_actors,
                metrics=metrics,
                local_hosts=frozenset(config.server.hosts),
                max_dereferences=config.media.max_dereferences,
                max_dereference_depth=config.media.max_dereference_depth,
                dereference_seconds=config.media.dereference_seconds,
                dereference_cache_seconds=config.media.dereference_cache_seconds,
                object_session=object_session,
                matchers=checkers(config, checker_session),
            )
            store = ActivityStore(
                pool,
                lazy=database.lazy,
                owner=f"sluice-{uuid.uuid4().hex[:12]}",
                lease_seconds=config.delivery.lease_seconds,
                dedup_window_seconds=config.delivery.dedup_window_seconds,
                max_age_seconds=config.delivery.max_age_seconds,
                keep_days=config.database.keep_days,
            )
            deliverer = upstream or HttpUpstream(
                config.upstream.url,
                timeout=config.upstream.timeout_seconds,
                concurrency=config.upstream.concurrency,
            )
            opened.push_async_callback(deliverer.close)
            hold = Hold(
                (media, *checks),
                policy=Policy.from_config(
                    config.rule,
                    config.hold.on_error,
                    config.hold.on_timeout,
                    effects_on=_effects_on(config, speaks=actor is not None),
                    irreversible=IRREVERSIBLE,
                ),
                max_seconds=config.hold.max_seconds,
            )
            # Webhooks are the admin's own URLs (loopback allowed): no SSRF policy, and
            # Notify follows no redirect. Closed after the outbox stops.
            webhook_session = aiohttp.ClientSession()
            opened.push_async_callback(webhook_session.close)
            outbox = Outbox(
                pool,
                max_attempts=config.outbox.max_attempts,
                backoff_initial=config.outbox.backoff_initial_seconds,
                backoff_max=config.outbox.backoff_max_seconds,
                lease=config.delivery.lease_seconds,
            )
            outbox.register(
                NOTIFY,
                Notify(
                    webhook_session,
                    timeout=config.notify.timeout_seconds,
                    secret=config.notify.key,
                ),
            )
            receipts = ReceiptStore(pool)
            outbox.register(
                HONOUR,
                Honour(
                    TrustRule.from_config(config.trust),
                    keys,
                    receipts,
                    BankStore(pool),
                    outbox=outbox,
                    webhooks=config.notify.webhooks,
                    admin_url=lambda: config.notify.admin_url or app[SLUICE].admin_url,
                    activities=store,
                ),
            )
            plans = {
                NOTIFY: planner(
                    config.notify.webhooks,
                    lambda: config.notify.admin_url or app[SLUICE].admin_url,
                )
            }
            if actor is not None:

                async def fetch_actor(url: str) -> Mapping[str, Any]:
                    fetched = await fetch_json_document(
                        session,
                        policy,
                        url,
                        max_redirects=config.network.max_redirects,
                        signer=signer,
                    )
                    return fetched.document

                outbox.register(SEND, Send(fediverse_session(), policy, actor.sign_request))
                outbox.register(
                    RECEIPT,
                    Receipts(
                        actor,
                        receipts,
                        outbox,
                        fetch_actor,
                        ReceiptSettings(
                            jurisdictions=config.receipts.jurisdictions,
                            flag=config.receipts.flag,
                            flag_skip_categories=config.receipts.flag_skip_categories,
                            legal_ground=config.receipts.legal_ground,
                            appeal=config.receipts.appeal,
                        ),
                    ),
                )
                plans[RECEIPT] = receipt_planner()
                outbox.register(FOLLOW, Follow(actor.id, outbox, fetch_actor))
            instance = None
            if config.upstream.software and config.upstream.token:
                instance = InstanceApi(
                    config.upstream.url,
                    config.upstream.software,
                    config.upstream.token,
                    lemmy_api=config.upstream.lemmy_api,
                )
                opened.push_async_callback(instance.close)
            if config.upstream.software in ACTS_ON and config.upstream.token:
                # The instance is the admin's own: no SSRF policy, no redirects followed.
                acting = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
                opened.push_async_callback(acting.close)
                actions = for_software(
                    config.upstream.software,
                    config.upstream.url,
                    config.upstream.token,
                    acting,
                    timeout=config.upstream.timeout_seconds,
                    ban_removes_data=config.upstream.ban_removes_data,
                    lemmy_api=config.upstream.lemmy_api,
                )
                for act in (Ban(actions), Remove(actions), Report(actions), Purge(actions, pool)):
                    outbox.register(act.name, act)
                    plans[act.name] = act_planner(act.name)
            opened.push_async_callback(outbox.stop)  # safe before start too
            Retention(store, outbox, UploadRecords(pool)).schedule()  # one process, each minute
            flow = Flow(
                store,
                hold,
                deliverer,
                metrics,
                concurrency=config.upstream.concurrency,
                backoff_initial=config.delivery.backoff_initial_seconds,
                backoff_max=config.delivery.backoff_max_seconds,
                evidence=EvidenceStore.from_config(pool, config),
                outbox=outbox,
                lazy=config.hold.lazy,
                plans=plans,
                resend=Resend(
                    fresh_seconds=config.delivery.fresh_signature_seconds,
                    accepted_seconds=config.delivery.accepted_signature_seconds,
                    signer=actor.sign_request if actor is not None else None,
                    instance=instance,
                ),
            )
            opened.push_async_callback(flow.stop)  # safe before start: nothing to stop
            if config.hold.lazy:  # a lazy check a stopped process never recorded
                outbox.every("lazy-checks", 60.0, flow.check_overdue)
            for synced in await bank_syncs(config, pool):  # banks that fill themselves
                outbox.every(f"bank-sync:{synced.bank}", synced.every, synced.sync.run)
            if flow.evidence is not None:  # past retention and not held: purged, audited
                outbox.every(
                    "evidence-purge", config.evidence.purge_every_seconds, flow.evidence.purge
                )
            signatures = config.signatures
            objects = ObjectVerifier(
                max_bytes=signatures.ld_max_bytes,
                max_nodes=signatures.ld_max_nodes,
                budget_seconds=signatures.ld_budget_seconds,
                workers=signatures.ld_workers,
                max_waiting=signatures.ld_max_waiting,
                per_host=signatures.ld_per_host,
                per_signer_per_minute=signatures.object_rate_per_minute,
                unlimited_signers=signatures.object_rate_exempt,
            )
            opened.callback(objects.close)
            passthrough = Passthrough(config.upstream.url, timeout=config.upstream.timeout_seconds)
            opened.push_async_callback(passthrough.close)

            async def on_receipt(activity: Activity, verified: Verified | None) -> None:
                """A Delete or Flag carrying a peer's receipt: judged by the outbox."""
                carried = carried_receipt(activity.document)
                if carried is None:
                    return
                try:
                    via = verified.signer if verified is not None else None
                    await outbox.enqueue(consider(carried, via=via))
                except Exception as exc:  # the activity itself is stored: it goes on
                    log.error("receipt_not_queued", activity_id=activity.id, error=str(exc))

            inbound = InboundDoor(
                flow,
                keys,
                metrics,
                inbox_paths=config.server.inbox_paths,
                otherwise=passthrough.handle,
                require_signatures=config.signatures.require,
                max_age=config.signatures.max_age_seconds,
                clock_skew=config.signatures.clock_skew_seconds,
                hosts=config.server.hosts,
                trusted_proxies=config.server.trusted_proxies,
                objects=objects,
                receipts=on_receipt,
            )
            # Local uploads meet the hold's own inspector, hasher and policy.
            upload = UploadDoor(
                upstream_url=config.upstream.url,
                inspector=media.inspector,
                policy=lambda: hold.policy,
                hasher=hasher,
                passthrough=passthrough,
                evidence=flow.evidence,
                outbox=outbox,
                webhooks=config.notify.webhooks,
                admin_url=lambda: config.notify.admin_url or app[SLUICE].admin_url,
                trusted_proxies=config.server.trusted_proxies,
                on_error=config.upload.on_error,
                max_bytes=config.upload.max_bytes,
                timeout=config.upload.timeout_seconds,
                concurrency=config.upload.concurrency,
                lazy=config.upload.lazy,
                cache=media.cache,
                records=UploadRecords(pool),
            )
            parts = Sluice(
                config,
                pool,
                store,
                flow,
                metrics,
                inbound,
                passthrough,
                banks,
                outbox=outbox,
                upload=upload,
                receipts=receipts,
                decisions=Decisions(
                    store,
                    flow.evidence,
                    BankStore(pool),
                    outbox,
                    plans,
                    quarantine_effects=_effects_on(config, speaks=actor is not None).get(
                        "quarantine", ()
                    ),
                    report_categories=config.review.report_categories,
                    video=hasher.video,
                ),
            )
            app[SLUICE] = parts
            admin_door = AdminDoor(parts)
            if actor is not None:  # the receipt door, before the instance's inbox paths
                speaker = _speaker_routes(
                    actor,
                    ReceiptDoor(
                        actor,
                        receipts,
                        outbox,
                        keys,
                        fetch_actor,
                        accepts=_follow_policy(config),
                        on_activity=on_receipt,
                        max_age=config.signatures.max_age_seconds,
                        clock_skew=config.signatures.clock_skew_seconds,
                    ),
                    inbound,
                    passthrough,
                )
                app.router.add_routes(speaker)
            # The doors, in order: /healthz, then uploads, then inbox POSTs, then
            # everything else. They are mounted as they open; aiohttp freezes the router
            # after start-up.
            for door in (
                admin_door.public_routes(),
                upload.routes(),
                inbound.routes(),
                passthrough.routes(),
            ):
                app.router.add_routes(door)
            admin = await _start_admin(config.admin.listen, admin_door, pool)
            if admin is not None:
                opened.push_async_callback(admin.cleanup)
            parts.outbound = await _start_outbound(config, policy, parts)
            if parts.outbound is not None:
                opened.push_async_callback(parts.outbound.close)
            flow.start()
            if actor is not None and config.receipts.follow:  # each peer followed once
                await outbox.enqueue(follows(config.receipts.follow))
            await outbox.start()
            log.info(
                "started",
                listen=config.server.listen,
                admin=parts.admin_url,
                outbound=parts.outbound_url,
                upstream=config.upstream.url,
                owner=store.owner,
                embedded_database=database.embedded is not None,
            )
            if not config.server.hosts:
                log.warning(
                    "hosts_not_configured",
                    advice="set [server] hosts: requests signed for any host are accepted",
                )
            yield

    async def going_away(app: web.Application) -> None:
        await app[SLUICE].passthrough.going_away()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(going_away)
    return app


async def _start_admin(listen: str, door: AdminDoor, pool: asyncpg.Pool) -> web.AppRunner | None:
    """The admin listener ([admin] listen): metrics, readiness, the admin API and the
    review UI (its session cookies sealed by a key every process shares)."""
    if not listen:
        return None
    runner = web.AppRunner(door.app(await session_key(pool)), access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    door.parts.admin_url = f"http://{shown}:{bound_port}"
    return runner


def _effects_on(config: Config, *, speaks: bool) -> dict[str, tuple[str, ...]]:
    """What every verdict of a disposition does, whatever the rule: notify on
    ``[notify] on`` (with webhooks), and a receipt for each quarantine once Sluice has
    an actor (the policy still withholds it from perceptual-only matches)."""
    effects: dict[str, tuple[str, ...]] = {}
    if config.notify.webhooks:
        effects = {d: (NOTIFY,) for d in config.notify.on}
    if speaks:
        effects["quarantine"] = (*effects.get("quarantine", ()), RECEIPT)
    return effects


def _follow_policy(config: Config) -> Callable[[str], bool]:
    """``[receipts] accept_follows``: whose Follow of Sluice's actor is accepted."""
    choice = config.receipts.accept_follows
    if choice == "everyone":
        return lambda actor_id: True
    if choice == "nobody":
        return lambda actor_id: False
    return LocalHosts(config.receipts.follow_domains).owns


def _speaker_routes(
    actor: Actor, door: ReceiptDoor, inbound: InboundDoor, passthrough: Passthrough
) -> list[web.RouteDef]:
    """The actor's routes and the receipt door, answering the actor's host alone: on a
    host of Sluice's own, its /inbox is not the instance's, so a request naming another
    host goes where it would have gone without them (an inbox POST, or the instance)."""
    own = LocalHosts([yarl.URL(actor.base_url).authority])

    def for_actor(handler: Handler) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            if own.answers_to(request.host):
                return await handler(request)
            if request.method == "POST":
                return await inbound.handle(request)
            return await passthrough.handle(request)

        return answer

    return [
        web.route(route.method, route.path, for_actor(route.handler), **route.kwargs)
        for route in (*actor_routes(actor), *door.routes())
        if isinstance(route, web.RouteDef)
    ]


async def _start_outbound(
    config: Config, policy: NetworkPolicy, parts: Sluice
) -> ForwardProxy | None:
    """The outbound door ([outbound] listen): the forward proxy, minting from Sluice's CA."""
    listen = config.outbound.listen
    if not listen:
        return None
    from relay.outbound.ca import CertificateAuthority

    trust = config.outbound.trust_file
    proxy = ForwardProxy(
        CertificateAuthority.load(config.storage.data_dir),  # names `sluice ca init` if absent
        policy,
        tunnel=config.outbound.tunnel,
        cafile=str(trust) if trust is not None else None,
        connect_timeout=config.network.connect_timeout_seconds,
        read_timeout=config.outbound.read_timeout_seconds,
        max_connections=config.outbound.max_connections,
    )
    if parts.upload is not None:  # remote media meets what uploads meet, then is served
        from relay.outbound.media import MediaGuard

        checked = parts.upload
        proxy.handler = MediaGuard(
            proxy.forwarder,
            inspector=checked.inspector,
            policy=checked.policy,
            hasher=checked.hasher,
            evidence=checked.evidence,
            outbox=checked.outbox,
            webhooks=checked.webhooks,
            admin_url=checked.admin_url,
            on_error=config.outbound.media_on_error,
            max_bytes=config.media.max_bytes,
            timeout=config.outbound.media_timeout_seconds,
            concurrency=config.outbound.media_concurrency,
            cache=checked.cache,
        )
    # The instance's deliveries are held and checked, then sent on by the flow.
    from relay.deliver import RemoteUpstream
    from relay.outbound.deliveries import Deliveries

    parts.flow.remote = RemoteUpstream(
        policy,
        cafile=str(trust) if trust is not None else None,
        connect_timeout=config.network.connect_timeout_seconds,
        timeout=config.upstream.timeout_seconds,
    )
    proxy.handler = Deliveries(
        parts.flow,
        proxy.handler,
        policy,
        max_age=config.outbound.delivery_max_age_seconds,
        max_bytes=config.server.max_body_bytes,
    )
    host, _, port = listen.rpartition(":")
    try:
        bound_host, bound_port = await proxy.start(host.strip("[]"), int(port))
    except BaseException:
        await proxy.close()
        raise
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    parts.outbound_url = f"http://{shown}:{bound_port}"
    return proxy
