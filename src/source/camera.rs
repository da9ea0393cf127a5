//! USB/V4L2 cameras through nokhwa (feature `camera`). MJPEG frames are
//! decoded with the `image` crate, YUYV and the other raw formats by nokhwa.
//!
//! Mode choice: among the camera's modes (in a format we can decode, or the
//! one `--pixel-format` asks for), the one closest to the requested
//! resolution (default 640x480) and frame rate (default: the highest).

use std::cmp::Reverse;
use std::time::Instant;

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
use nokhwa::{Camera, NokhwaError};

use super::{CameraOptions, FrameSource, PixelFormat, SourceError, SourceFrame};
use super::decode::decode_bytes;
use crate::timing::ms_since;

/// Wire formats we can turn into RGB.
const DECODABLE: &[FrameFormat] = &[FrameFormat::MJPEG, FrameFormat::YUYV, FrameFormat::RAWRGB, FrameFormat::GRAY, FrameFormat::NV12];

/// Resolution asked for when none is given.
const DEFAULT_RESOLUTION: (u32, u32) = (640, 480);

/// The V4L2 cameras present: (N of `/dev/videoN`, name).
pub fn list() -> Result<Vec<(u32, String)>, SourceError> {
    let cameras = nokhwa::query(ApiBackend::Video4Linux)
        .map_err(|e| SourceError::Open { device: "V4L2 devices".into(), reason: e.to_string() })?;
    Ok(cameras
        .iter()
        .filter_map(|c| match c.index() {
            CameraIndex::Index(i) => Some((*i, c.human_name())),
            CameraIndex::String(_) => None,
        })
        .collect())
}

/// An open, streaming V4L2 camera.
pub struct V4l2Camera {
    index: u32,
    name: String,
    options: CameraOptions,
    camera: Camera,
}

impl V4l2Camera {
    /// Opens `/dev/video<index>` and starts streaming; a clear error when
    /// there is no such camera.
    pub fn open(index: u32, options: &CameraOptions) -> Result<Self, SourceError> {
        let cameras = list()?;
        let Some((_, name)) = cameras.iter().find(|(i, _)| *i == index) else {
            return Err(SourceError::NoCamera { device: device(index), found: cameras.len() });
        };
        let camera = start(index, options)?;
        Ok(V4l2Camera { index, name: name.clone(), options: *options, camera })
    }
}

impl FrameSource for V4l2Camera {
    fn describe(&self) -> String {
        format!("{} ({})", device(self.index), self.name)
    }

    fn is_live(&self) -> bool {
        true
    }

    fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError> {
        let buffer = self.camera.frame().map_err(|e| SourceError::Lost { device: device(self.index), reason: e.to_string() })?;
        let start = Instant::now();
        let image = match buffer.source_frame_format() {
            FrameFormat::MJPEG => decode_bytes(buffer.buffer(), &device(self.index)).map_err(|e| SourceError::Corrupt(e.to_string()))?,
            _ => buffer
                .decode_image::<RgbFormat>()
                .map_err(|e| SourceError::Corrupt(format!("{}: {e}", device(self.index))))?,
        };
        Ok(Some(SourceFrame::now(image, None, ms_since(start))))
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        // The device may be gone already; stopping is best effort.
        let _ = self.camera.stop_stream();
        self.camera = start(self.index, &self.options)?;
        Ok(())
    }
}

fn device(index: u32) -> String {
    format!("/dev/video{index}")
}

/// Creates the camera, sets the chosen mode and starts streaming.
fn start(index: u32, options: &CameraOptions) -> Result<Camera, SourceError> {
    let fail = |e: NokhwaError| SourceError::Open { device: device(index), reason: e.to_string() };
    let request = RequestedFormat::with_formats(RequestedFormatType::None, DECODABLE);
    let mut camera = Camera::with_backend(CameraIndex::Index(index), request, ApiBackend::Video4Linux).map_err(fail)?;
    let modes = camera.compatible_camera_formats().map_err(fail)?;
    let mode = choose(&modes, options).ok_or_else(|| SourceError::Open {
        device: device(index),
        reason: format!(
            "no {} mode; the camera offers: {}",
            options.format.map_or("decodable".into(), |f| format!("{f:?}").to_uppercase()),
            modes.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
        ),
    })?;
    camera.set_camera_requset(RequestedFormat::with_formats(RequestedFormatType::Exact(mode), DECODABLE)).map_err(fail)?;
    camera.open_stream().map_err(fail)?;
    log::info!("{}: {mode}", device(index));
    Ok(camera)
}

/// The mode closest to the request (see the module docs).
fn choose(modes: &[CameraFormat], options: &CameraOptions) -> Option<CameraFormat> {
    let wanted = options.format.map(|f| match f {
        PixelFormat::Mjpeg => FrameFormat::MJPEG,
        PixelFormat::Yuyv => FrameFormat::YUYV,
    });
    let (w, h) = options.resolution.unwrap_or(DEFAULT_RESOLUTION);
    modes
        .iter()
        .filter(|m| DECODABLE.contains(&m.format()) && wanted.is_none_or(|f| m.format() == f))
        .min_by_key(|m| {
            // Sizes compare by ratio: 1920x1080 is as far from 1280x720 as 853x480.
            let ratio = |a: u32, b: u32| (a.max(1) as f64 / b.max(1) as f64).ln().abs();
            let size_cost = ((ratio(m.width(), w) + ratio(m.height(), h)) * 1e3).round() as u64;
            let fps_cost = options.fps.map_or(0, |fps| m.frame_rate().abs_diff(fps));
            (size_cost, fps_cost, Reverse(m.frame_rate()))
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_closest_to_the_request() {
        let modes = [
            CameraFormat::new_from(1920, 1080, FrameFormat::MJPEG, 30),
            CameraFormat::new_from(640, 480, FrameFormat::YUYV, 30),
            CameraFormat::new_from(640, 480, FrameFormat::MJPEG, 60),
            CameraFormat::new_from(640, 480, FrameFormat::MJPEG, 30),
        ];
        let pick = |options: CameraOptions| choose(&modes, &options).unwrap();
        assert_eq!(pick(CameraOptions::default()), modes[2]);
        assert_eq!(pick(CameraOptions { fps: Some(30), format: Some(PixelFormat::Yuyv), ..Default::default() }), modes[1]);
        assert_eq!(pick(CameraOptions { resolution: Some((1280, 720)), ..Default::default() }), modes[0]);
        let none = CameraOptions { resolution: Some((1920, 1080)), format: Some(PixelFormat::Yuyv), ..Default::default() };
        assert_eq!(choose(&modes, &none), Some(modes[1]));
        assert_eq!(choose(&modes[..1], &none), None);
    }

    #[test]
    fn a_missing_camera_is_a_clear_error() {
        let error = V4l2Camera::open(63, &CameraOptions::default()).err().unwrap().to_string();
        assert!(error.starts_with("/dev/video63: no such camera (found "), "{error}");
    }
}
