"""Reads a run's TensorBoard folder with the `tensorboard` package and prints what it holds as JSON.

Usage: read_tensorboard.py LOGDIR

Two views, both from TensorBoard's own readers:

- "files": every event file (sorted by name) read record by record with TensorBoard's record
  reader, which checks the length and data CRCs and raises on a mismatch or a torn record
  (TensorBoard's loaders would silently stop there), decoded as `tensorflow.Event`;
- "accumulator": what TensorBoard shows, `EventAccumulator` over the whole folder (all files
  merged): scalars per tag as [step, value], images per tag as [step, width, height, decoded
  width, decoded height, decoded mode] with the PNG decoded by PIL.
"""

import io
import json
import os
import sys

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow


def read_file(path):
    reader = pywrap_tensorflow.PyRecordReader_New(path.encode(), 0, b"", None)
    events = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            break
        event = event_pb2.Event.FromString(reader.record())
        out = {"step": event.step, "wall_time": event.wall_time}
        if event.HasField("file_version"):
            out["file_version"] = event.file_version
        if event.HasField("summary"):
            out["scalars"] = {}
            out["images"] = {}
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out["scalars"][v.tag] = v.simple_value
                elif v.HasField("image"):
                    out["images"][v.tag] = [v.image.width, v.image.height, v.image.colorspace]
                else:
                    raise ValueError(f"{path}: value {v.tag} is neither a scalar nor an image")
        events.append(out)
    return events


def main(logdir):
    files = sorted(f for f in os.listdir(logdir) if "tfevents" in f)
    raw = [{"name": f, "events": read_file(os.path.join(logdir, f))} for f in files]
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {}
    for t in tags["images"]:
        images[t] = []
        for e in acc.Images(t):
            png = Image.open(io.BytesIO(e.encoded_image_string))
            png.load()
            images[t].append([e.step, e.width, e.height, png.width, png.height, png.mode])
    json.dump({"files": raw, "accumulator": {"scalars": scalars, "images": images}}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
