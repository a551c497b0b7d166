#!/usr/bin/env python3
"""What a held read transaction alone costs a direct writer, with no replication work.

Continuous replication (dbwarden's read pin, Litestream's read lock) keeps a read
transaction open so that no checkpoint restarts the WAL over frames not yet shipped.
This measures that cost by itself: one connection commits one row per transaction
(synchronous=FULL, SQLite's automatic checkpoint on, as Healarr writes) for a few
seconds, while another connection holds

  none     no read transaction;
  advance  a read transaction, ended and begun again every 100 ms (as a tailer's pass);
  hold     one read transaction the whole time;
  restart  as advance, and when the WAL is past 1,000 frames, what dbwarden's WAL
           restarter does (src/replica/wal_restart.rs): a PASSIVE checkpoint, then
           with the write lock taken by a second connection (BEGIN IMMEDIATE, tried
           every 100 us), another PASSIVE checkpoint and the read transaction moved on
           the WAL now entirely in the database, so the writer's next commit restarts
           the WAL;
  zeros    as advance, with the WAL file made 600 MB long with zero bytes first: it
           grows, but no commit extends the file.

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
    if mode == "zeros":
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(path + "-wal", "r+b") as wal:
            wal.seek(0, os.SEEK_END)
            for _ in range(600):
                wal.write(bytes(1 << 20))
            os.fsync(wal.fileno())
    stop = threading.Event()

    def reader() -> None:
        if mode == "hold":
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            stop.wait()
            conn.execute("COMMIT")
            return
        pins = [sqlite3.connect(path, isolation_level=None) for _ in range(2)]
        lock = sqlite3.connect(path, isolation_level=None, timeout=0)
        checkpoints = sqlite3.connect(path, isolation_level=None)
        held = [None]

        def move_pin() -> None:
            nxt = 0 if held[0] is None else 1 - held[0]
            pins[nxt].execute("BEGIN")
            pins[nxt].execute("SELECT count(*) FROM sqlite_master").fetchall()
            if held[0] is not None:
                pins[held[0]].execute("COMMIT")
            held[0] = nxt

        def wal_frames() -> int:
            with open(path + "-shm", "rb") as shm:
                return int.from_bytes(shm.read(20)[16:20], sys.byteorder)

        while not stop.is_set():
            move_pin()
            if mode == "restart" and wal_frames() > 1000:
                checkpoints.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                while True:
                    try:
                        lock.execute("BEGIN IMMEDIATE")
                        break
                    except sqlite3.OperationalError:
                        time.sleep(0.0001)
                move_pin()
                checkpoints.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                move_pin()
                lock.execute("ROLLBACK")
            stop.wait(0.1)
        pins[held[0]].execute("COMMIT")

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
            for mode in ("none", "advance", "hold", "restart", "zeros"):
                rate, wal_mb = run(mode, seconds, directory)
                print(f"{mode:8} {rate:8.0f} commits/s   WAL {wal_mb:7.1f} MB")


if __name__ == "__main__":
    main()
