//! `causeseg-calibrate`: will convert float ONNX models into INT8 QDQ models.
//!
//! Not implemented yet: the INT8 calibration tool is tracked as its own piece
//! of work. The binary exists so the workspace layout is final and says so
//! honestly instead of pretending to calibrate.

fn main() {
    eprintln!("causeseg-calibrate: INT8 calibration is not implemented yet");
    std::process::exit(2);
}
