"""Unit tests of the parts of alloc_cuda_torch and kit_summary that need no
torch and no GPU (run by tests/python.rs: python3 -m unittest)."""

import ctypes
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import alloc_cuda_torch as act  # noqa: E402
import kit_summary  # noqa: E402


class Stats(unittest.TestCase):
    def test_parse_stats_keeps_pytorch_keys(self):
        s = act.parse_stats('{"reserved_bytes.all.current": 2097152, "allocation.all.current": 1}')
        self.assertEqual(list(s), ["allocation.all.current", "reserved_bytes.all.current"])
        self.assertEqual(s["reserved_bytes.all.current"], 2097152)

    def test_no_stats_is_an_error_naming_the_cause(self):
        act._lib = None
        saved = act.last_error
        act.last_error = lambda: "CUDA unavailable: libcuda not found"
        try:
            with self.assertRaisesRegex(RuntimeError, "CUDA unavailable"):
                act.parse_stats("")
        finally:
            act.last_error = saved

    def test_summary_has_torch_rows_and_values(self):
        stats = {
            "allocated_bytes.all.current": 3 << 20,
            "allocated_bytes.all.peak": 5 << 20,
            "allocation.all.current": 2,
            "num_device_alloc": 4,
        }
        text = act.format_summary(stats, device=1)
        self.assertIn("device 1", text)
        self.assertIn("Allocated memory", text)
        self.assertIn("3.00 MiB", text)
        self.assertIn("5.00 MiB", text)
        self.assertIn("num_device_alloc", text)
        self.assertTrue(all(len(line) == 81 for line in text.splitlines()), text)

    def test_read_text_grows_its_buffer(self):
        text = "x" * 100

        def fill(buf, cap):
            if len(text) < cap:
                ctypes.memmove(buf, text.encode() + b"\0", len(text) + 1)
            return len(text)

        self.assertEqual(act._read_text(fill, size=8), text)
        self.assertEqual(act._read_text(lambda b, n: 0), "")

    def test_find_library_order(self):
        os.environ["ALLOC_CUDA_LIB"] = "/x/lib.so"
        try:
            self.assertEqual(act.find_library("/given.so"), "/given.so")
            self.assertEqual(act.find_library(), "/x/lib.so")
        finally:
            del os.environ["ALLOC_CUDA_LIB"]
        self.assertTrue(act.find_library().endswith("target/release/liballoc_cuda_capi.so"))

    def test_allocation_pointer_is_the_storage_base(self):
        class Storage:
            def data_ptr(self):
                return 0x1000

        class View:
            def data_ptr(self):
                return 0x1400

            def untyped_storage(self):
                return Storage()

        self.assertEqual(act.allocation_pointer(View()), 0x1000)

    def test_empty_cache_chain_reaches_the_plug_in(self):
        calls = []

        class Lib:
            def alloc_cuda_empty_cache(self, device):
                calls.append(("alloc_cuda", device))

        saved = act._lib
        act._lib = Lib()
        try:
            wired = act.chain_empty_cache(lambda: calls.append(("torch",)), lambda: 3)
            wired()
        finally:
            act._lib = saved
        self.assertEqual(calls, [("torch",), ("alloc_cuda", 3)])
        self.assertTrue(wired.alloc_cuda_wired)

    def test_torch_without_a_gpu_is_a_skip(self):
        import types

        fake = types.ModuleType("torch")
        fake.__version__ = "0.0"
        fake.version = types.SimpleNamespace(cuda="13.0")
        fake.cuda = types.SimpleNamespace(is_available=lambda: False)
        saved = sys.modules.get("torch")
        sys.modules["torch"] = fake
        try:
            with self.assertRaises(SystemExit) as e:
                act.require_torch_gpu()
            self.assertEqual(e.exception.code, act.SKIP_EXIT)
            fake.cuda = types.SimpleNamespace(is_available=lambda: True)
            self.assertIs(act.require_torch_gpu(), fake)
        finally:
            if saved is None:
                del sys.modules["torch"]
            else:
                sys.modules["torch"] = saved


class KitSummary(unittest.TestCase):
    OURS = "\n".join([
        "device: NVIDIA H200",
        "bytes,ours_ns,cuMemAlloc_ns,cuMemAllocAsync_ns,ratio_async,ratio_sync",
        "4096,20.5,3000.0,400.0,19.5,146.3",
        '{"trace":"bert_serving","peak_reserved_bytes":2097152,"efficiency":0.97,"device_allocs":3}',
    ])
    TORCH = "\n".join([
        '{"trace": "traces/bert_serving.csv", "peak_reserved_bytes": 4194304, "efficiency": 0.6, "num_device_alloc": 5}',
        "bytes,torch_ns",
        "4096,900.0",
    ])

    def test_side_by_side(self):
        text = kit_summary.summary(self.OURS, self.TORCH)
        self.assertIn("device: NVIDIA H200", text)
        self.assertIn("4096  20  3000  400  900", text)
        self.assertIn("bert_serving  2.0 MiB / 4.0 MiB  0.970 / 0.600  3 / 5", text)

    def test_results_rows_per_setting(self):
        logs = {("ours", "on"): self.OURS, ("torch", "on"): self.TORCH}
        text = kit_summary.results_rows(logs)
        self.assertIn("device: NVIDIA H200", text)
        self.assertIn("| on | 4096 | 20 | 3000 | 400 | 900 |", text)
        self.assertIn("| on | bert_serving | 2.0 MiB / 4.0 MiB | 0.970 / 0.600 | - / - |", text)
        self.assertNotIn("| off |", text)

    def test_missing_logs_still_summarise(self):
        text = kit_summary.summary(self.OURS, "")
        self.assertIn("bert_serving  2.0 MiB / -  0.970 / -  3 / -", text)
        self.assertIn("device: unknown", kit_summary.summary("", "garbage\n{not json"))


if __name__ == "__main__":
    unittest.main()
