"""Benchmark the email producer: emails parsed and produced per second, draining a pre-loaded mailbox.

    .venv/bin/python bench/bench_email_producer.py --count 2000 --batch-size 500

Pre-loads COUNT emails with the store-email simulator (unthrottled SMTP) into a mailbox of its own, then
times one drain exactly as `omnistream produce emails --once` runs it (IMAP fetch, parse, Avro, one Kafka
transaction per batch) into topics of its own. Also times the parser alone on the same bytes (the best of
three passes, in wall-clock and CPU seconds: CPU time is what other load on the machine disturbs least).
The mailbox, topics and subjects are removed afterwards. Prints figures and their ratios to issue 14's
goals (drained ≥ 2,000 emails/s, the parser ≥ 10,000 emails/s; a ratio ≥ 1 meets the goal) and the
drain's ratio to the parser measured in the same run; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from datetime import UTC, datetime

import httpx
from confluent_kafka.admin import AdminClient
from imapclient import IMAPClient
from pydantic import SecretStr

from omnistream.kafka.registry import registry_client
from omnistream.settings import MailSettings, get_settings
from omnistream.stack.manager import Stack
from producers.emails.model import Provenance
from producers.emails.parser import ParseError, parse_email
from producers.emails.producer import EmailProducer, EmailTopics, ProducerOptions
from simulators.email_sender import EmailsConfig, send_emails

# Issue 14's goals, emails per second.
DRAIN_GOAL = 2_000
PARSER_GOAL = 10_000


def wait_for_mail(mail: MailSettings, count: int, deadline_s: float = 300.0) -> list[bytes]:
    """The mailbox's messages once ``count`` have arrived."""
    deadline = time.monotonic() + deadline_s
    with IMAPClient(mail.host, mail.imap_port, ssl=False, timeout=60) as imap:
        imap.login(mail.mailbox_user, mail.mailbox_password.get_secret_value())
        imap.select_folder("INBOX", readonly=True)
        uids = imap.search("ALL")
        while len(uids) < count and time.monotonic() < deadline:
            imap.idle()
            imap.idle_check(timeout=1.0)
            imap.idle_done()
            uids = imap.search("ALL")
        if len(uids) < count:
            raise SystemExit(f"only {len(uids)} of {count} emails arrived")
        fetched = imap.fetch(uids, ["BODY.PEEK[]"])
    return [fetched[uid][b"BODY[]"] for uid in uids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="Emails to pre-load and drain.")
    parser.add_argument("--batch-size", type=int, default=500, help="Emails per Kafka transaction.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--anomaly-share", type=float, default=0.05)
    args = parser.parse_args()

    settings = get_settings()
    Stack(settings).up(["kafka", "registry", "greenmail"])
    run_id = f"bench-{os.getpid()}-{int(time.time())}"
    mail = settings.mail.model_copy(update={"mailbox_user": run_id, "mailbox_password": SecretStr(run_id)})
    api = f"http://{mail.host}:{mail.api_port}/api/user"
    user = {"email": mail.mailbox_address, "login": mail.mailbox_user, "password": run_id}
    httpx.post(api, json=user, timeout=10).raise_for_status()
    topics = EmailTopics.for_orders(
        f"bench.{run_id}.stores.order_confirmations", f"bench.{run_id}.checkpoints"
    )
    try:
        config = EmailsConfig(seed=args.seed, rate=0, count=args.count, anomaly_share=args.anomaly_share)
        sent = send_emails(mail, config)
        raws = wait_for_mail(mail, args.count)
        size = sum(len(raw) for raw in raws)
        print(
            f"pre-loaded          {sent.seconds:8.2f} s  {args.count:,} emails over SMTP "
            f"(average {size / args.count:,.0f} bytes)"
        )

        provenance = Provenance("imap://bench", 1, 1, datetime.now(UTC))
        passes = []
        for _ in range(3):
            started, cpu = time.perf_counter(), time.process_time()
            for raw in raws:
                with contextlib.suppress(ParseError):
                    parse_email(raw, provenance)
            passes.append((time.perf_counter() - started, time.process_time() - cpu))
        parse_s, parse_cpu_s = min(passes)
        parse_rate = args.count / parse_s
        print(
            f"parsed (no network) {parse_s:8.2f} s  {parse_rate:10,.0f} emails/s  "
            f"({args.count / parse_cpu_s:,.0f}/s of CPU time)  "
            f"ratio to the {PARSER_GOAL:,}/s goal {parse_rate / PARSER_GOAL:.2f} (goal >= 1)"
        )

        options = ProducerOptions(batch_size=args.batch_size, transactional_id=f"bench-{run_id}")
        started = time.perf_counter()
        with EmailProducer(settings, mail, topics, options) as producer:
            ready = time.perf_counter()
            progress = producer.drain()
        done = time.perf_counter()
        drain_s, total_s = done - ready, done - started
        emails = progress.produced + progress.dead_lettered
        drain_rate = emails / drain_s
        print(
            f"drained (--once)    {drain_s:8.2f} s  {drain_rate:10,.0f} emails/s  "
            f"({progress.produced:,} produced, {progress.dead_lettered:,} dead-lettered, "
            f"{progress.batches} transactions of up to {args.batch_size})"
        )
        print(
            f"  with start-up     {total_s:8.2f} s  {emails / total_s:10,.0f} emails/s  "
            f"(topics, schemas, fencing, checkpoint read, IMAP login: {ready - started:.2f} s)"
        )
        print(
            f"ratios              drained / {DRAIN_GOAL:,}/s goal {drain_rate / DRAIN_GOAL:.2f} (goal >= 1); "
            f"with start-up {emails / total_s / DRAIN_GOAL:.2f}; drained / parser alone in this run "
            f"{drain_rate / parse_rate:.2f}"
        )
    finally:
        httpx.delete(f"{api}/{mail.mailbox_user}", timeout=10)  # GreenMail deletes the user and its mail
        names = [topics.orders, topics.dead_letters, topics.checkpoints]
        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)
        registry = registry_client(settings)
        for name in names:
            for permanent in (False, True):
                with contextlib.suppress(Exception):
                    registry.delete_subject(f"{name}-value", permanent=permanent)


if __name__ == "__main__":
    main()
