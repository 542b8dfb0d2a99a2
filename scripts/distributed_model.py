#!/usr/bin/env python3
"""The load-time model of docs/distributed.md: seconds to load a checkpoint on N GPUs that each
read 1/N of it and exchange the rest (instanttensor's group loads), from the bandwidth of each
stage. Prints the tables the document quotes; change the figures with the options.

  scripts/distributed_model.py                       # the 700 GB / 8 x 7 GB/s NVMe case
  scripts/distributed_model.py --checkpoint-gb 16 --keep all --gpus-per-node 8

Every stage runs on windows in a pipeline, so a load takes as long as its slowest stage plus the
time to fill the pipeline (one window's share through every stage):
  storage     C/N bytes per rank at the rank's storage bandwidth
  pcie        C/N bytes host -> device (pinned copies) over the rank's PCIe link
  exchange    X bytes received per rank: inside a node over NVLink (or PCIe), from other nodes
              over the rank's network link; X = K (N-1)/N, K the bytes a rank keeps
  landing     K bytes device -> device (window buffer -> the rank's memory)
Without NVLink, uploads and exchanges share the PCIe link, so they add instead of overlapping.
"""
import argparse


def stages(args, n):
    c = args.checkpoint_gb
    if args.keep == "all":
        keep = c
    else:  # split: every rank keeps 1/N of the split bytes and all of the replicated ones
        keep = args.replicated_gb + (c - args.replicated_gb) / n
    received = keep * (n - 1) / n
    nodes = max(1, -(-n // args.gpus_per_node))
    # A rank receives from the other ranks of its node and from those of the other nodes in
    # proportion to their number; each part moves over its own link.
    peers = n - 1
    in_node = min(n, args.gpus_per_node) - 1
    from_node = received * in_node / peers if peers else 0.0
    from_network = received - from_node
    s = {
        "storage": c / n / args.storage_gbps,
        "pcie": c / n / args.pcie_gbps,
        "exchange (node)": from_node / (args.nvlink_gbps if args.nvlink_gbps > 0 else args.pcie_gbps),
        "exchange (network)": from_network / args.network_gbps if nodes > 1 else 0.0,
        "landing": keep / args.hbm_copy_gbps,
    }
    if args.nvlink_gbps <= 0:  # uploads and exchanges share the PCIe link
        s["pcie"] += s.pop("exchange (node)")
        s["exchange (node)"] = 0.0
    fill = args.window_gb / n / args.storage_gbps + args.window_gb / n / args.pcie_gbps
    return keep, received, s, fill


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-gb", type=float, default=700.0, help="checkpoint size C (GB)")
    p.add_argument("--keep", choices=["split", "all"], default="split",
                   help="split: tensors split across the ranks (TP/EP); all: every rank keeps everything")
    p.add_argument("--replicated-gb", type=float, default=3.7,
                   help="with --keep split: bytes every rank keeps whole (embeddings, norms, ...)")
    p.add_argument("--storage-gbps", type=float, default=7.0, help="storage bandwidth of one rank (GB/s)")
    p.add_argument("--pcie-gbps", type=float, default=50.0, help="pinned host->device copy of one rank (GB/s)")
    p.add_argument("--nvlink-gbps", type=float, default=360.0,
                   help="bytes a rank receives per second inside a node (NCCL bus bandwidth); 0: no NVLink")
    p.add_argument("--network-gbps", type=float, default=45.0, help="bytes a rank receives per second from other nodes")
    p.add_argument("--hbm-copy-gbps", type=float, default=1500.0, help="device-to-device copy (GB/s)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-memory-gb", type=float, default=141.0, help="memory of one GPU, to flag what cannot fit")
    p.add_argument("--window-gb", type=float, default=0.134, help="LoadOptions::window_bytes (GB)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    args = p.parse_args()

    print(f"C = {args.checkpoint_gb:g} GB, keep = {args.keep}, storage {args.storage_gbps:g} GB/s per rank, "
          f"PCIe {args.pcie_gbps:g} GB/s, NVLink {args.nvlink_gbps:g} GB/s, network {args.network_gbps:g} GB/s, "
          f"{args.gpus_per_node} GPUs per node")
    print(f"{'N':>4} {'keeps GB':>9} {'recv GB':>8} {'storage s':>10} {'pcie s':>9} {'xchg s':>7} "
          f"{'net s':>6} {'land s':>7} {'load s':>7}  bound by")
    for n in args.ranks:
        keep, received, s, fill = stages(args, n)
        slowest = max(s, key=s.get)
        total = s[slowest] + fill
        note = "" if keep <= args.gpu_memory_gb else f"  (keeps more than one GPU's {args.gpu_memory_gb:g} GB)"
        print(f"{n:>4} {keep:>9.1f} {received:>8.1f} {s['storage']:>10.2f} {s['pcie']:>9.2f} "
              f"{s['exchange (node)']:>7.2f} {s['exchange (network)']:>6.2f} {s['landing']:>7.2f} {total:>7.2f}  "
              f"{slowest}{note}")


if __name__ == "__main__":
    main()
