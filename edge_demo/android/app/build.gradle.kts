plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.compress.edge"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.compress.edge"
        minSdk = 23 // LiteRT 2.x
        targetSdk = 35
        versionCode = 1
        versionName = "0.2.0"
    }
    androidResources { noCompress += "tflite" } // the model is memory-mapped from the APK
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:2.1.0")
}
