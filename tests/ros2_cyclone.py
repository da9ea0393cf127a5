"""Eclipse Cyclone DDS as an independent ROS 2 peer for tests/ros2.rs: no ROS
install, sensor_msgs/msg/Image defined here by its IDL, as ROS 2 maps it onto
DDS (type sensor_msgs::msg::dds_::Image_, topic /a/b as rt/a/b).

  ros2_cyclone.py subscribe DOMAIN TOPIC OUT_DIR COUNT TIMEOUT_S
      prints "ready", then writes COUNT received images to OUT_DIR as
      N.json (header and size fields) and N.bin (data); exits 0 when done,
      2 on timeout.
  ros2_cyclone.py publish DOMAIN TOPIC WIDTH HEIGHT PERIOD_S SECONDS
      publishes rgb8 images (a gradient) every PERIOD_S for SECONDS, with
      header.stamp.sec = 1000 + i, nanosec = 500, frame_id "cyclone_cam";
      prints each stamp it sent.
"""

import json
import os
import sys
import time
from dataclasses import dataclass

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import int32, sequence, uint8, uint32
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration


@dataclass
@final
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
@final
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time
    frame_id: str


@dataclass
@final
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]


# The sensor-data profile causeseg uses for images.
SENSOR_QOS = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(10), Policy.Durability.Volatile)


def dds_topic(ros_topic):
    return "rt" + ros_topic


def subscribe(domain, topic, out_dir, count, timeout):
    participant = DomainParticipant(domain)
    reader = DataReader(participant, Topic(participant, dds_topic(topic), Image), qos=SENSOR_QOS)
    print("ready", flush=True)
    received, deadline = 0, time.monotonic() + timeout
    while received < count and time.monotonic() < deadline:
        for image in reader.take_iter(timeout=duration(milliseconds=200)):
            meta = {
                "sec": image.header.stamp.sec,
                "nanosec": image.header.stamp.nanosec,
                "frame_id": image.header.frame_id,
                "width": image.width,
                "height": image.height,
                "encoding": image.encoding,
                "step": image.step,
                "len": len(image.data),
            }
            with open(os.path.join(out_dir, f"{received}.bin"), "wb") as f:
                f.write(bytes(image.data))
            with open(os.path.join(out_dir, f"{received}.json"), "w") as f:
                json.dump(meta, f)
            print(json.dumps(meta), flush=True)
            received += 1
            if received >= count:
                break
    return 0 if received >= count else 2


def publish(domain, topic, width, height, period, seconds):
    participant = DomainParticipant(domain)
    writer = DataWriter(participant, Topic(participant, dds_topic(topic), Image), qos=SENSOR_QOS)
    row = bytes(v for x in range(width) for v in (x * 255 // width, 128, 64))
    data = list(row * height)
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        stamp = Time(sec=1000 + i, nanosec=500)
        header = Header(stamp=stamp, frame_id="cyclone_cam")
        writer.write(Image(header=header, height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3, data=data))
        print(f"sent {stamp.sec}.{stamp.nanosec:09d}", flush=True)
        i += 1
        time.sleep(period)
    return 0


def main(argv):
    mode, domain, topic = argv[1], int(argv[2]), argv[3]
    if mode == "subscribe":
        return subscribe(domain, topic, argv[4], int(argv[5]), float(argv[6]))
    if mode == "publish":
        return publish(domain, topic, int(argv[4]), int(argv[5]), float(argv[6]), float(argv[7]))
    print(f"unknown mode {mode}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
