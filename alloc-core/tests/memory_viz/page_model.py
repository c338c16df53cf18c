"""What PyTorch's MemoryViz page does with a snapshot before it draws it, in
Python. The page reads the file with its own pickle reader, which knows
protocols 2 to 4 and a fixed set of opcodes: `read_like_memory_viz` accepts
exactly that set and fails on any other opcode. The "Allocator State
History" view then starts from the snapshot's final
segments and blocks and walks device_traces backwards, undoing each event.
That walk fails (in the page: an exception, a blank view) when the trace and
the final state disagree: a free_requested of a block that is not live, a
segment_map of a range that is not in a segment, a live block outside every
segment. This model performs the same walk and raises with the event's index.

usage: python3 page_model.py SNAPSHOT.pickle...
"""

import pickle
import struct
import sys

# The opcodes MemoryViz's reader handles (its `unpickle` function).
MEMORY_VIZ_OPCODES = set(b"ehJKM}]\x95\x8aj(\x94\x80u\x8c.\x86a\x89qX)\x88NGt\x85\x87rlds")


def read_like_memory_viz(data):
    """Decodes `data` with MemoryViz's opcode set; raises on anything else."""
    stack, marks, memo, i = [], [], {}, 0

    def u4(at):
        return struct.unpack_from("<I", data, at)[0]

    while True:
        op = data[i]
        i += 1
        if op not in MEMORY_VIZ_OPCODES:
            raise AssertionError(f"opcode {op:#x} at byte {i - 1}: MemoryViz cannot read it")
        c = chr(op)
        if op == 0x80:
            if not 2 <= data[i] <= 4:
                raise AssertionError(f"pickle protocol {data[i]}: MemoryViz reads 2 to 4")
            i += 1
        elif op == 0x95:
            i += 8
        elif c == "(":
            marks.append(len(stack))
        elif c in "}]":
            stack.append({} if c == "}" else [])
        elif c == ")":
            stack.append(())
        elif c == "N":
            stack.append(None)
        elif op in (0x88, 0x89):
            stack.append(op == 0x88)
        elif c == "K":
            stack.append(data[i])
            i += 1
        elif c == "M":
            stack.append(struct.unpack_from("<H", data, i)[0])
            i += 2
        elif c == "J":
            stack.append(struct.unpack_from("<i", data, i)[0])
            i += 4
        elif op == 0x8A:
            n = data[i]
            stack.append(int.from_bytes(data[i + 1:i + 1 + n], "little", signed=True))
            i += 1 + n
        elif c == "G":
            stack.append(struct.unpack_from(">d", data, i)[0])
            i += 8
        elif c == "X" or op == 0x8C:
            n, i = (u4(i), i + 4) if c == "X" else (data[i], i + 1)
            stack.append(data[i:i + n].decode("utf-8"))
            i += n
        elif c == "e":
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            stack[-1].extend(items)
        elif c == "a":
            v = stack.pop()
            stack[-1].append(v)
        elif c == "u":
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            for k in range(0, len(items), 2):
                stack[-1][items[k]] = items[k + 1]
        elif c == "s":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif c in "tl":
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            stack.append(tuple(items) if c == "t" else items)
        elif c == "d":
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            stack.append({items[k]: items[k + 1] for k in range(0, len(items), 2)})
        elif op in (0x85, 0x86, 0x87):
            n = op - 0x84
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif op == 0x94:
            memo[len(memo)] = stack[-1]
        elif c == "q":
            memo[data[i]] = stack[-1]
            i += 1
        elif c == "r":
            memo[u4(i)] = stack[-1]
            i += 4
        elif c == "h":
            stack.append(memo[data[i]])
            i += 1
        elif c == "j":
            stack.append(memo[u4(i)])
            i += 4
        elif c == ".":
            return stack.pop()


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
            raw = f.read()
        snapshot = read_like_memory_viz(raw)
        if snapshot != pickle.loads(raw):
            raise AssertionError(f"{path}: MemoryViz's reading differs from pickle's")
        n = check(snapshot)
        print(f"{path}: MemoryViz reads it; its state history rewinds through {n} events")
