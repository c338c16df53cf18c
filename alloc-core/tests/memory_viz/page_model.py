"""What PyTorch's MemoryViz page does with a snapshot before it draws it, in
Python: the "Allocator State History" view starts from the snapshot's final
segments and blocks and walks device_traces backwards, undoing each event.
That walk fails (in the page: an exception, a blank view) when the trace and
the final state disagree: a free_requested of a block that is not live, a
segment_map of a range that is not in a segment, a live block outside every
segment. This model performs the same walk and raises with the event's index.

usage: python3 page_model.py SNAPSHOT.pickle...
"""

import pickle
import sys


def check(snapshot):
    device = 0
    segments = [
        {"addr": s["address"], "size": s["total_size"], "stream": s["stream"]}
        for s in snapshot["segments"]
        if s["device"] == device
    ]
    blocks = {}
    for s in snapshot["segments"]:
        addr = s["address"]
        for b in s["blocks"]:
            if b["state"] in ("active_allocated", "active_pending_free"):
                blocks[addr] = {
                    "size": b["size"],
                    "free_requested": b["state"] == "active_pending_free",
                }
            addr += b["size"]
    segments.sort(key=lambda s: s["addr"])

    def containing(addr, size):
        for i, s in enumerate(segments):
            if s["addr"] <= addr and addr + size <= s["addr"] + s["size"]:
                return i
        return None

    def check_blocks(where):
        for addr, b in blocks.items():
            if containing(addr, 1) is None:
                raise AssertionError(f"{where}: live block {addr:#x} is in no segment")

    def map_back(e):  # undo segment_free / segment_unmap: the range returns
        seg = {"addr": e["addr"], "size": e["size"], "stream": e["stream"]}
        segments.append(seg)
        segments.sort(key=lambda s: s["addr"])
        if e["action"] == "segment_unmap":  # merge with neighbours of its stream
            merged = []
            for s in segments:
                if merged and merged[-1]["addr"] + merged[-1]["size"] == s["addr"] \
                        and merged[-1]["stream"] == s["stream"]:
                    merged[-1]["size"] += s["size"]
                else:
                    merged.append(dict(s))
            segments[:] = merged

    def unmap_back(i, e):  # undo segment_alloc / segment_map: the range leaves
        idx = containing(e["addr"], e["size"])
        if idx is None:
            raise AssertionError(f"event {i} {e['action']} {e['addr']:#x}+{e['size']}: in no segment")
        s = segments[idx]
        if e["action"] == "segment_alloc" and (s["addr"], s["size"]) != (e["addr"], e["size"]):
            raise AssertionError(f"event {i} segment_alloc {e['addr']:#x}: segment is {s}")
        end, s_end = e["addr"] + e["size"], s["addr"] + s["size"]
        del segments[idx]
        if s["addr"] < e["addr"]:
            segments.append({"addr": s["addr"], "size": e["addr"] - s["addr"], "stream": s["stream"]})
        if end < s_end:
            segments.append({"addr": end, "size": s_end - end, "stream": s["stream"]})
        segments.sort(key=lambda s: s["addr"])

    events = snapshot["device_traces"][device]
    check_blocks("final state")
    for i in range(len(events) - 1, -1, -1):
        e = events[i]
        a = e["action"]
        if a == "free_requested":
            if e["addr"] not in blocks:
                raise AssertionError(f"event {i} free_requested {e['addr']:#x}: block not live")
            blocks[e["addr"]]["free_requested"] = False
        elif a == "free_completed":
            blocks[e["addr"]] = {"size": e["size"], "free_requested": True}
        elif a == "alloc":
            if blocks.pop(e["addr"], None) is None:
                raise AssertionError(f"event {i} alloc {e['addr']:#x}: block not live after it")
        elif a in ("segment_free", "segment_unmap"):
            map_back(e)
        elif a in ("segment_alloc", "segment_map"):
            unmap_back(i, e)
        check_blocks(f"before event {i} ({a})")
    return len(events)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            n = check(pickle.load(f))
        print(f"{path}: MemoryViz state history rewinds through {n} events")
