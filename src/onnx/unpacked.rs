//! ONNX bytes with repeated numbers written one per field, as onnx.proto
//! (a proto2 file) has them. prost encodes `tract_onnx::pb` the proto3 way,
//! packing `AttributeProto.ints`/`floats` and `TensorProto.dims` into one
//! length-delimited field. Both forms are valid protobuf and tract, ONNX
//! Runtime and `onnx` read either; rten's reader (rten-onnx 0.27) reads only
//! the unpacked form. This re-encodes prost's output at the wire level,
//! unpacking exactly those fields and copying every other byte.

use prost::Message;
use tract_onnx::pb;

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

/// The ONNX messages on the way from a model to its attributes and tensors.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
}

impl Kind {
    /// The message kind a length-delimited field holds, if it is one on the way.
    fn child(self, field: u64) -> Option<Kind> {
        match (self, field) {
            (Kind::Model, 7) => Some(Kind::Graph),
            (Kind::Graph, 1) => Some(Kind::Node),
            (Kind::Graph, 5) => Some(Kind::Tensor),
            (Kind::Node, 5) => Some(Kind::Attribute),
            (Kind::Attribute, 5 | 10) => Some(Kind::Tensor),
            (Kind::Attribute, 6 | 11) => Some(Kind::Graph),
            _ => None,
        }
    }

    /// The wire type of each element of a packed field to unpack, if it is one.
    fn packed(self, field: u64) -> Option<u64> {
        match (self, field) {
            (Kind::Attribute, 7) => Some(FIXED32),
            (Kind::Attribute, 8) | (Kind::Tensor, 1) => Some(VARINT),
            _ => None,
        }
    }
}

/// `model` encoded with its repeated attribute numbers and tensor dims unpacked.
pub fn encode_unpacked(model: &pb::ModelProto) -> Vec<u8> {
    let packed = model.encode_to_vec();
    let mut out = Vec::with_capacity(packed.len() + packed.len() / 64);
    rewrite(&packed, Kind::Model, &mut out).expect("prost's own output is well-formed protobuf");
    out
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Copies the message `bytes` of `kind` to `out`, unpacking and recursing
/// where [`Kind`] says; `None` on malformed input.
fn rewrite(bytes: &[u8], kind: Kind, out: &mut Vec<u8>) -> Option<()> {
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let key = read_varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            VARINT => {
                read_varint(bytes, &mut at)?;
            }
            FIXED64 => at += 8,
            FIXED32 => at += 4,
            LENGTH_DELIMITED => {
                let len = read_varint(bytes, &mut at)? as usize;
                let body = bytes.get(at..at.checked_add(len)?)?;
                at += len;
                if let Some(element) = kind.packed(field) {
                    let mut inner = 0;
                    while inner < body.len() {
                        write_varint(field << 3 | element, out);
                        let from = inner;
                        match element {
                            FIXED32 => inner += 4,
                            _ => {
                                read_varint(body, &mut inner)?;
                            }
                        }
                        out.extend_from_slice(body.get(from..inner)?);
                    }
                    continue;
                }
                if let Some(child) = kind.child(field) {
                    let mut nested = Vec::with_capacity(len);
                    rewrite(body, child, &mut nested)?;
                    write_varint(key, out);
                    write_varint(nested.len() as u64, out);
                    out.extend_from_slice(&nested);
                    continue;
                }
            }
            _ => return None,
        }
        out.extend_from_slice(bytes.get(start..at)?);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field key (number, wire type) of the message `bytes`, in order.
    fn keys(bytes: &[u8]) -> Vec<(u64, u64)> {
        let (mut at, mut keys) = (0, Vec::new());
        while at < bytes.len() {
            let key = read_varint(bytes, &mut at).unwrap();
            keys.push((key >> 3, key & 7));
            match key & 7 {
                VARINT => drop(read_varint(bytes, &mut at)),
                FIXED32 => at += 4,
                FIXED64 => at += 8,
                _ => at += read_varint(bytes, &mut at).unwrap() as usize,
            }
        }
        keys
    }

    #[test]
    fn attribute_numbers_and_dims_come_out_one_per_field_and_decode_to_the_same_model() {
        let attribute = pb::AttributeProto { name: "perm".into(), ints: vec![0, 2, 1, 300], floats: vec![0.5, -1.0], ..Default::default() };
        let tensor = pb::TensorProto { name: "w".into(), dims: vec![2, 3], float_data: vec![1.0; 6], data_type: 1, ..Default::default() };
        let node = pb::NodeProto { op_type: "Transpose".into(), attribute: vec![attribute.clone()], ..Default::default() };
        let graph = pb::GraphProto { node: vec![node], initializer: vec![tensor.clone()], ..Default::default() };
        let model = pb::ModelProto { ir_version: 8, graph: Some(graph), ..Default::default() };

        let bytes = encode_unpacked(&model);
        assert_eq!(pb::ModelProto::decode(bytes.as_slice()).unwrap(), model, "the same model, only encoded differently");
        assert_ne!(bytes, model.encode_to_vec(), "prost packs these fields; the rewrite must change them");
        let mut unpacked = Vec::new();
        rewrite(&attribute.encode_to_vec(), Kind::Attribute, &mut unpacked).unwrap();
        let numbers: Vec<(u64, u64)> = keys(&unpacked).into_iter().filter(|(f, _)| *f == 7 || *f == 8).collect();
        assert_eq!(numbers, [(7, FIXED32), (7, FIXED32), (8, VARINT), (8, VARINT), (8, VARINT), (8, VARINT)]);
        let mut unpacked = Vec::new();
        rewrite(&tensor.encode_to_vec(), Kind::Tensor, &mut unpacked).unwrap();
        assert_eq!(keys(&unpacked).into_iter().filter(|(f, _)| *f == 1).count(), 2, "two dims, two fields");
    }

    #[test]
    fn malformed_bytes_are_refused_not_copied() {
        let mut out = Vec::new();
        assert!(rewrite(&[0x0a, 0x05, 0x01], Kind::Model, &mut out).is_none(), "a length past the end");
        assert!(rewrite(&[0x0b], Kind::Model, &mut out).is_none(), "wire type 3 (groups) is not ONNX");
    }
}
