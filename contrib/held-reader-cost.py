#!/usr/bin/env python3
"""What a held read transaction alone costs a direct writer, with no replication work.

Continuous replication (dbwarden's read pin, Litestream's read lock) keeps a read
transaction open so that no checkpoint restarts the WAL over frames not yet shipped.
This measures that cost by itself: one connection commits one row per transaction
(synchronous=FULL, SQLite's automatic checkpoint on, as Healarr writes) for a few
seconds, while another connection holds

  none     no read transaction;
  advance  a read transaction, ended and begun again every 100 ms (as a tailer's pass);
  hold     one read transaction the whole time.

    python3 contrib/held-reader-cost.py [seconds] [runs]

It prints commits per second and the WAL's final size for each. Python's sqlite3 uses
the system's SQLite (not dbwarden's bundled one): the figure to read is the ratio.
"""

import os
import sqlite3
import sys
import tempfile
import threading
import time


def run(mode: str, seconds: float, directory: str) -> tuple[float, float]:
    path = os.path.join(directory, f"{mode}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA synchronous=FULL")
    writer.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, body TEXT)")
    stop = threading.Event()

    def reader() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        while not stop.is_set():
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            stop.wait(0.1 if mode == "advance" else None)
            conn.execute("COMMIT")

    thread = None
    if mode != "none":
        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.2)
    commits = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        writer.execute("BEGIN")
        writer.execute("INSERT INTO events(body) VALUES (?)", ("x" * 300,))
        writer.execute("COMMIT")
        commits += 1
    elapsed = time.monotonic() - started
    stop.set()
    if thread:
        thread.join()
    wal_mb = os.path.getsize(path + "-wal") / 1e6
    writer.close()
    return commits / elapsed, wal_mb


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"SQLite {sqlite3.sqlite_version}, {seconds:g} s each")
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(runs):
            for mode in ("none", "advance", "hold"):
                rate, wal_mb = run(mode, seconds, directory)
                print(f"{mode:8} {rate:8.0f} commits/s   WAL {wal_mb:7.1f} MB")


if __name__ == "__main__":
    main()
